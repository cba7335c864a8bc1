"""The audio network: 16 kHz PCM window -> per-frame audio tokens (wav2vec2 + projection), or log-mel windows
-> whisper level states (the frame gather runs outside the graph). The encoder itself:
:mod:`engine.models.audio`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.models.audio import WHISPER_POSITIONS, AudioEncoder, frame_windows, whisper_frame_tokens, whisper_steps
from engine.models.model import EmoteModel
from engine.timebase import frames_covering
from export.networks.spec import EXPORT_BATCH, Network, StreamShapes, TensorSpec


def linear_resample_matrix(source: int, target: int) -> torch.Tensor:
    """``[source, target]`` weights of linear interpolation with aligned corners.

    ``x @ W`` equals ``F.interpolate(x, size=target, mode="linear", align_corners=True)`` for
    ``x`` of length ``source`` on its last axis; the exported audio graph takes this matrix as an
    input so that the output frame count can change from call to call.
    """
    scale = (source - 1) / (target - 1) if target > 1 else 0.0
    position = torch.arange(target, dtype=torch.float64) * scale
    low = position.floor().long().clamp(max=source - 1)
    high = (low + 1).clamp(max=source - 1)
    frac = position - low
    weights = torch.zeros(source, target, dtype=torch.float64)
    columns = torch.arange(target)
    weights.index_put_((low, columns), 1 - frac, accumulate=True)
    weights.index_put_((high, columns), frac, accumulate=True)
    return weights.float()


@dataclass
class AudioFeed:
    """Inputs of one audio graph call plus what turns its outputs into tokens.

    Attributes:
        inputs: tensors by graph input name.
        frames: video frames asked for.
        steps: whisper only: 50 Hz steps that hold audio.
    """

    inputs: dict[str, torch.Tensor]
    frames: int
    steps: int = 0


class _Wav2Vec2Graph(nn.Module):
    """``pcm`` ``[samples]``, ``resample`` ``[conv_frames, frames]`` -> audio tokens ``[frames, T, D]``."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pcm: torch.Tensor, resample: torch.Tensor) -> torch.Tensor:
        conv = self.encoder.feature_extractor(pcm[None])
        levels = self.encoder.wav2vec2_levels(torch.matmul(conv, resample))
        return self.encoder.audioproj(frame_windows(levels, self.encoder.config.window))


class _WhisperGraph(nn.Module):
    """``mel`` ``[windows, n_mels, 3000]`` -> level states ``[windows, 1500, levels, d_model]``."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder.whisper_mel_levels(mel)


class AudioNetwork(Network):
    """Audio encoder (+ projection): always float32, as the torch backend runs it.

    wav2vec2: inputs ``pcm`` ``[samples]`` (normalised and padded by :meth:`prepare`) and
    ``resample`` ``[conv_frames, frames]`` (linear interpolation of the 50 Hz conv features to the
    frame rate); output ``audio_tokens`` ``[frames, T, D]``.
    whisper: input ``mel`` ``[windows, n_mels, 3000]``; output ``levels``
    ``[windows, 1500, levels, d_model]``; :meth:`finish` gathers each frame's tokens.
    """

    name = "audio"
    component = "audio_encoder"
    precisions = ("fp32",)

    def __init__(self, model: EmoteModel, shapes: StreamShapes):
        super().__init__(model, shapes)
        self.encoder: AudioEncoder = model.audio_encoder
        self.kind = self.encoder.config.kind

    @property
    def inputs(self) -> list[TensorSpec]:
        if self.kind == "wav2vec2":
            return [TensorSpec("pcm", ("samples",), "float32"),
                    TensorSpec("resample", ("conv_frames", "frames"), "float32")]
        return [TensorSpec("mel", ("windows", self.encoder.encoder_config.num_mel_bins, 2 * WHISPER_POSITIONS),
                           "float32")]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.kind == "wav2vec2":
            return [TensorSpec("audio_tokens", ("frames", self.encoder.output_tokens, self.encoder.output_dim),
                               "float32")]
        levels = self.encoder.level_count
        return [TensorSpec("levels", ("windows", WHISPER_POSITIONS, levels, self.encoder.encoder_config.d_model),
                           "float32")]

    def module(self) -> nn.Module:
        return _Wav2Vec2Graph(self.encoder) if self.kind == "wav2vec2" else _WhisperGraph(self.encoder)

    def _wav2vec2_dims(self, frames: int, samples: int) -> dict[str, int]:
        return {"frames": frames, "samples": samples, "conv_frames": self.encoder.conv_frames(samples)}

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        s = self.shapes
        if self.kind == "wav2vec2":
            lo = self._wav2vec2_dims(1, self.encoder.min_samples)
            hi = self._wav2vec2_dims(s.audio_frames, s.audio_frames * s.samples_per_frame)
            return [("dynamic", lo, hi, hi)]
        windows = math.ceil(s.audio_frames * s.samples_per_frame / (2 * WHISPER_POSITIONS * 160))
        return [("dynamic", {"windows": 1}, {"windows": 1}, {"windows": windows})]

    def export_dims(self) -> dict[str, int]:
        if self.kind == "wav2vec2":
            return self._wav2vec2_dims(2 * EXPORT_BATCH + 1, (2 * EXPORT_BATCH + 1) * self.shapes.samples_per_frame)
        return {"windows": EXPORT_BATCH}

    def sample_input(self, dims: dict[str, int] | None = None, precision: str = "fp32", seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Prepared inputs of random speech-like noise covering ``dims["frames"]`` frames (wav2vec2)."""
        dims = dims or self.export_dims()
        generator = torch.Generator().manual_seed(seed)
        if self.kind == "wav2vec2":
            pcm = 0.1 * torch.randn(dims["samples"], generator=generator)
            frames = max(dims["frames"], frames_covering(dims["samples"], self.config.fps))
            feed = self.prepare(pcm, frames)
            return tuple(feed.inputs[name].to(device) for name in self.input_names)
        pcm = 0.1 * torch.randn(dims["windows"] * 2 * WHISPER_POSITIONS * 160, generator=generator)
        return (self.encoder.whisper_mel(pcm).to(device),)

    def prepare(self, pcm: torch.Tensor, num_frames: int) -> AudioFeed:
        """PCM ``[samples]`` (16 kHz) covering ``num_frames`` frames -> the graph's inputs (float32, CPU or
        the encoder's device), with the same checks and pre-processing as the torch encoder."""
        if self.kind == "wav2vec2":
            x = self.encoder.wav2vec2_input(pcm.float(), num_frames).float()
            conv = self.encoder.conv_frames(x.numel())
            return AudioFeed({"pcm": x, "resample": linear_resample_matrix(conv, num_frames).to(x.device)}, num_frames)
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        pcm = self.encoder._check_pcm(pcm, None)
        return AudioFeed({"mel": self.encoder.whisper_mel(pcm)}, num_frames, whisper_steps(pcm.numel()))

    def finish(self, outputs: dict[str, torch.Tensor], feed: AudioFeed) -> torch.Tensor:
        """Graph outputs -> audio tokens ``[frames, T, D]``."""
        if self.kind == "wav2vec2":
            return outputs["audio_tokens"]
        levels = outputs["levels"].flatten(0, 1)[: feed.steps][:, self.encoder.level_index]
        return whisper_frame_tokens(levels, feed.frames, self.encoder.fps, self.encoder.config.window)
