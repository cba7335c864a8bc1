"""The ranges a model's ``config.json`` and the command line's flags share, so that a number one of them accepts
the other accepts too (kept free of heavy imports: the command line reads it before loading anything)."""

SIDE_LIMITS = (32, 2048)
"""Smallest and largest frame side in pixels (a model's ``resolution``, ``--size``)."""
FPS_LIMITS = (1.0, 120.0)
"""Slowest and fastest video frame rate, frames per second (a model's ``fps``, ``--fps``)."""
CLIP_FRAMES_LIMITS = (1, 64)
"""Fewest and most frames in one clip (a model's ``clip_frames``, ``--clip``)."""
STEPS_LIMITS = (1, 50)
"""Fewest and most denoising steps (``sampling.steps``, ``--steps``)."""
GUIDANCE_LIMITS = (0.0, 30.0)
"""Smallest and largest guidance scale (``sampling.cfg_audio`` / ``cfg_ref``, ``--cfg-audio`` / ``--cfg-ref``)."""
THREADS_LIMITS = (1, 256)
"""Fewest and most intra-op threads of a CPU backend's compute thread (``--threads``)."""
