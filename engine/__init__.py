"""emote: a streaming inference engine for audio-driven portrait video diffusion."""

__version__ = "0.1.0"
DEFAULT_MODEL = "talking64"
"""The model commands use when none is named: the small talking-face model trained on synthetic data
(``engine/assets/models/talking64``, made by ``python -m engine.training.train``)."""
