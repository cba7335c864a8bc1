"""emote: a streaming inference engine for audio-driven portrait video diffusion."""

__version__ = "0.1.0"
