"""Audio encoders and the audio projection: 16 kHz mono PCM -> per-frame audio tokens.

Two feature paths, each shaped like the system it imports from:

* ``wav2vec2`` (Hallo): the conv feature extractor's 50 Hz output is linearly interpolated to the
  video frame count ``ceil(seconds * fps)`` *before* the feature projection and the transformer, so the
  transformer runs at the frame rate; every transformer layer output is kept -> ``[frames, layers, dim]``.
  Each frame then sees frames ``f-m .. f+m`` (clamped at the ends) and :class:`AudioProjection` turns
  that window into ``tokens`` vectors of ``output_dim`` for the backbone's audio cross-attention.
* ``whisper`` (EchoMimic v1): EchoMimic's front end: the log-mel of the whole audio (STFT reflect-padded
  at both ends, the last STFT frame dropped, floored at 8 below the whole audio's maximum), cut into
  3000-frame (30 s) windows, the last one padded with 0.0; the encoder's states after the conv +
  positional embedding and after each block (the final layer norm is not used) at 50 Hz; video frame
  ``i`` takes whisper steps ``c-2m .. c+2m+1`` around ``c = int(i * 50 / fps)`` (clamped) at every level,
  flattened to ``(4m + 2) * levels`` tokens of the encoder width. No projection.

The transformers modules are held so that state-dict keys match the released files: for wav2vec2 the
``Wav2Vec2Model`` children sit at the top level (``feature_extractor.*``, ``feature_projection.*``,
``encoder.*``, ``masked_spec_embed``) and the projection is ``audioproj.*`` (Hallo's ``net.pth`` prefix);
for whisper the encoder is ``encoder.*`` (the keys of a transformers ``WhisperModel``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from engine.config import ENCODER_KINDS, AudioConfig
from engine.timebase import SAMPLE_RATE, check_fps, frames_covering

WHISPER_STEP_RATE = 50
"""Whisper encoder steps per second: hop of 160 samples, then a stride-2 conv."""

WHISPER_HOP = 160
WHISPER_POSITIONS = 1500
WHISPER_MEL_FRAMES = WHISPER_POSITIONS * 2
"""Log-mel frames in one whisper window (30 s): the encoder only accepts exactly this many."""
WHISPER_N_FFT = 400
"""STFT size of whisper's log-mel (25 ms), Hann window."""
WHISPER_LOG_RANGE = 8.0
"""The log-mel floor: ``log10`` power values are clamped to at least the audio's maximum minus this."""

NORM_EPS = 1e-7
"""Variance floor of Wav2Vec2FeatureExtractor's zero-mean unit-variance normalisation."""

def frame_windows(features: Tensor, window: int) -> Tensor:
    """Give each frame its neighbours: ``[frames, ...]`` -> ``[frames, 2*window+1, ...]``.

    Entry ``[f, j]`` is ``features[clamp(f - window + j, 0, frames-1)]``, i.e. frames f-m .. f+m with
    the first and last frame repeated past the ends.
    """
    frames = features.shape[0]
    offsets = torch.arange(-window, window + 1, device=features.device)
    index = (torch.arange(frames, device=features.device)[:, None] + offsets[None, :]).clamp(0, frames - 1)
    return features[index]


def whisper_steps(samples: int) -> int:
    """Whisper encoder steps (50 Hz) that hold audio for ``samples`` samples at 16 kHz: half the log-mel's
    ``samples // 160`` frames, rounded down, as EchoMimic keeps."""
    return samples // WHISPER_HOP // 2


def echomimic_frame_count(samples: int, fps: float) -> int:
    """Video frames EchoMimic makes of ``samples`` samples at 16 kHz: its chunker (``feature2chunks``) emits
    frame ``i`` while the centre step ``int(i * (50 / fps))`` of the frame before it lies within the
    :func:`whisper_steps` of the audio, so the video runs up to two frames past the audio's end."""
    steps, frame = whisper_steps(samples), 0
    while int(frame * (WHISPER_STEP_RATE / fps)) <= steps:
        frame += 1
    return frame + 1


def whisper_frame_tokens(levels: Tensor, num_frames: int, fps: float, window: int = 2) -> Tensor:
    """Gather EchoMimic's per-frame whisper tokens from 50 Hz level states.

    levels: ``[steps, L, D]`` (step s covers audio time ``s/50 s``). Frame i has centre
    ``c = int(i * 50 / fps)`` and takes steps ``c-2m .. c+2m+1`` (``4m+2`` steps, clamped to
    ``0 .. steps-1``). Returns ``[num_frames, (4m+2)*L, D]`` with token ``L*j + l`` = level l of the
    j-th of those steps.
    """
    steps, num_levels, dim = levels.shape
    centres = torch.floor(torch.arange(num_frames, dtype=torch.float64, device=levels.device) * WHISPER_STEP_RATE / fps)
    offsets = torch.arange(-2 * window, 2 * window + 2, device=levels.device)
    index = (centres.long()[:, None] + offsets[None, :]).clamp(0, steps - 1)
    return levels[index].reshape(num_frames, offsets.numel() * num_levels, dim)


def _layer_output(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Hidden state of an encoder layer call (transformers 4 returns a tuple, 5 a tensor)."""
    return output[0] if isinstance(output, tuple) else output


class AudioProjection(nn.Module):
    """Hallo's audio projection (parameter names ``proj1``, ``proj2``, ``proj3``, ``norm``).

    Maps a frame's window of features ``[..., window_frames, layers, dim]`` to
    ``[..., tokens, output_dim]``: flatten (window, layer, channel order), Linear -> ReLU -> Linear ->
    ReLU -> Linear to ``tokens * output_dim``, reshape, LayerNorm over ``output_dim``.
    """

    def __init__(self, window_frames: int, layers: int, dim: int, intermediate_dim: int, tokens: int, output_dim: int):
        super().__init__()
        self.tokens = tokens
        self.output_dim = output_dim
        self.proj1 = nn.Linear(window_frames * layers * dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, windows: Tensor) -> Tensor:
        """``[..., window_frames, layers, dim]`` -> ``[..., tokens, output_dim]``."""
        lead = windows.shape[:-3]
        x = torch.relu(self.proj1(windows.flatten(-3)))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(*lead, self.tokens, self.output_dim)
        return self.norm(x)


class AudioEncoder(nn.Module):
    """Audio encoder (+ projection for wav2vec2): 16 kHz mono PCM -> per-frame audio tokens.

    ``fps``: the model's video frames per second, to which the tokens are aligned (one set per frame).
    Construction allocates through the current default device, so ``with torch.device("meta"):
    AudioEncoder(config, fps)`` builds a weightless copy (for counting parameters). The module is put in
    eval mode (no dropout, no SpecAugment; the masking vector is kept only so checkpoints load).
    """

    def __init__(self, config: AudioConfig, fps: float, pretrained: Wav2Vec2Model | WhisperEncoder | None = None):
        """Build from ``config`` for ``fps`` frames per second; ``pretrained`` (used by :meth:`from_pretrained`)
        supplies loaded weights."""
        super().__init__()
        self.config = config
        self.fps = check_fps(fps)
        if config.kind == "wav2vec2":
            model = pretrained if pretrained is not None else Wav2Vec2Model(Wav2Vec2Config(**config.encoder))
            self.encoder_config = model.config
            if self.encoder_config.add_adapter:
                raise ValueError("wav2vec2 configs with add_adapter=True are not supported")
            self.feature_extractor = model.feature_extractor
            self.feature_projection = model.feature_projection
            self.encoder = model.encoder
            if hasattr(model, "masked_spec_embed"):
                self.masked_spec_embed = model.masked_spec_embed
            self.level_count = self.encoder_config.num_hidden_layers
            self.level_index = self._check_layers(config.layers)
            proj = config.projection
            self.audioproj = AudioProjection(
                2 * config.window + 1, len(self.level_index), self.encoder_config.hidden_size,
                proj.intermediate_dim, proj.tokens, proj.output_dim,
            )
            self.min_samples = self._receptive_field()
        else:
            encoder = pretrained if pretrained is not None else WhisperEncoder(WhisperConfig(**config.encoder))
            self.encoder_config = encoder.config
            if self.encoder_config.max_source_positions != WHISPER_POSITIONS:
                raise ValueError(
                    f"whisper encoders take 30 s windows: max_source_positions must be {WHISPER_POSITIONS}"
                )
            self.encoder = encoder
            self.level_count = self.encoder_config.encoder_layers + 1
            self.level_index = self._check_layers(config.layers)
            filters = WhisperFeatureExtractor(
                feature_size=self.encoder_config.num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=WHISPER_HOP,
                n_fft=WHISPER_N_FFT).mel_filters
            self.mel_filters = torch.from_numpy(filters.T.astype("float32"))  # CPU, not a buffer: not in checkpoints
            self.min_samples = 2 * WHISPER_HOP  # one encoder step (and more than the STFT's reflect padding)
        self.eval()

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, config: AudioConfig | None = None, dtype: torch.dtype = torch.float32, *,
        fps: float,
    ) -> AudioEncoder:
        """Load the encoder from a local transformers directory (offline, no download).

        The directory's ``config.json`` decides the kind (``wav2vec2``: any Wav2Vec2 checkpoint, e.g.
        ``Wav2Vec2ForCTC`` files with the ``wav2vec2.`` prefix; ``whisper``: a Whisper model, whose
        decoder is dropped). ``fps``: the model's frame rate. ``config`` gives the other settings (its
        ``encoder`` dict is replaced by the directory's); the wav2vec2 projection stays randomly initialised.
        Weights are cast to ``dtype``.
        """
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if model_type not in ENCODER_KINDS:
            raise ValueError(f"{os.fspath(path)} holds a {model_type!r} model; expected one of {ENCODER_KINDS}")
        config = config if config is not None else AudioConfig(kind=model_type)
        if config.kind != model_type:
            raise ValueError(f"{os.fspath(path)} holds a {model_type} model but the config asks for {config.kind}")
        if model_type == "wav2vec2":
            pretrained = Wav2Vec2Model.from_pretrained(path, local_files_only=True)
        else:
            pretrained = WhisperModel.from_pretrained(path, local_files_only=True).get_encoder()
        config = AudioConfig.from_dict({**config.to_dict(), "encoder": pretrained.config.to_diff_dict()})
        return cls(config, fps, pretrained).to(dtype)

    @property
    def output_tokens(self) -> int:
        """Audio tokens per video frame that the backbone's cross-attention sees."""
        if self.config.kind == "wav2vec2":
            return self.config.projection.tokens
        return (4 * self.config.window + 2) * len(self.level_index)

    @property
    def output_dim(self) -> int:
        """Width of each audio token (the backbone's audio cross-attention dim)."""
        if self.config.kind == "wav2vec2":
            return self.config.projection.output_dim
        return self.encoder_config.d_model

    def features(self, pcm: Tensor, num_frames: int | None = None, sample_rate: int | None = None) -> Tensor:
        """Per-frame audio features of ``pcm`` (float mono samples at 16 kHz, shape ``[samples]``).

        num_frames: output frames; ``None`` means ``ceil(seconds * fps)``. wav2vec2: a larger count
        zero-pads the (normalised) audio by ``sample_rate // fps`` samples per extra frame, as Hallo
        pads a clip; a smaller count is an error (it would compress time). whisper: frames past the
        audio repeat its last step.
        sample_rate: if given, checked against the config's ``sample_rate``.
        Returns wav2vec2 ``[frames, layers, hidden]``; whisper ``[frames, output_tokens, d_model]``.
        """
        pcm = self._check_pcm(pcm, sample_rate)
        natural = frames_covering(pcm.numel(), self.fps)
        frames = natural if num_frames is None else num_frames
        if frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {frames}")
        if self.config.kind == "wav2vec2":
            if frames < natural:
                raise ValueError(
                    f"num_frames={frames} is fewer than the {natural} frames of the audio; trim the audio instead"
                )
            return self._wav2vec2_features(pcm, frames, frames - natural)
        return self._whisper_tokens(pcm, frames)

    def wav2vec2_input(self, pcm: Tensor, num_frames: int) -> Tensor:
        """The conv feature extractor's input for ``num_frames`` frames of ``pcm``: ``[samples']``.

        Checks ``pcm`` as :meth:`features` does, normalises it (in float64, when configured) and
        zero-pads it by ``sample_rate // fps`` samples per frame past the audio's own frames; returned
        in the encoder's weight dtype. Exported graphs take this as their input.
        """
        if self.config.kind != "wav2vec2":
            raise ValueError("wav2vec2_input needs a wav2vec2 audio encoder")
        pcm = self._check_pcm(pcm, None)
        natural = frames_covering(pcm.numel(), self.fps)
        if num_frames < natural:
            raise ValueError(
                f"num_frames={num_frames} is fewer than the {natural} frames of the audio; trim the audio instead"
            )
        return self._wav2vec2_input(pcm, num_frames - natural)

    def conv_frames(self, samples: int) -> int:
        """Frames the wav2vec2 conv feature extractor yields for ``samples`` input samples."""
        length = samples
        for kernel, stride in zip(self.encoder_config.conv_kernel, self.encoder_config.conv_stride):
            length = (length - kernel) // stride + 1
        return length

    def tokens(self, pcm: Tensor, num_frames: int | None = None, sample_rate: int | None = None) -> Tensor:
        """Audio tokens per video frame, ``[frames, output_tokens, output_dim]``; arguments as :meth:`features`.

        wav2vec2: features -> each frame's window of 2m+1 frames -> :class:`AudioProjection`.
        whisper: the features are already the tokens.
        """
        feats = self.features(pcm, num_frames, sample_rate)
        if self.config.kind == "wav2vec2":
            return self.audioproj(frame_windows(feats, self.config.window))
        return feats

    def forward(self, pcm: Tensor, num_frames: int | None = None) -> Tensor:
        """Same as :meth:`tokens`."""
        return self.tokens(pcm, num_frames)

    def _check_layers(self, layers: list[int] | None) -> list[int]:
        if layers is None:
            return list(range(self.level_count))
        if max(layers) >= self.level_count:
            raise ValueError(
                f"layers {layers} out of range: the {self.config.kind} encoder has {self.level_count} hidden states"
            )
        return list(layers)

    def _receptive_field(self) -> int:
        """Fewest samples for which the wav2vec2 conv feature extractor yields one frame."""
        samples = 1
        for kernel, stride in reversed(list(zip(self.encoder_config.conv_kernel, self.encoder_config.conv_stride))):
            samples = kernel + stride * (samples - 1)
        return samples

    def _check_pcm(self, pcm: Tensor, sample_rate: int | None) -> Tensor:
        if sample_rate is not None and sample_rate != self.config.sample_rate:
            raise ValueError(
                f"audio is at {sample_rate} Hz; the audio encoder needs {self.config.sample_rate} Hz (resample first)"
            )
        pcm = torch.as_tensor(pcm)
        if pcm.dim() != 1:
            raise ValueError(f"audio must be mono PCM of shape [samples], got shape {list(pcm.shape)}")
        if not pcm.is_floating_point():
            raise ValueError(f"audio must be float PCM in [-1, 1], got {pcm.dtype} (scale integer PCM first)")
        if pcm.numel() == 0:
            raise ValueError("audio is empty")
        if pcm.numel() < self.min_samples:
            raise ValueError(
                f"audio too short: {pcm.numel()} samples, "
                f"the {self.config.kind} encoder needs at least {self.min_samples}"
            )
        if not torch.isfinite(pcm).all():
            raise ValueError("audio contains NaN or infinite samples")
        return pcm

    def _wav2vec2_input(self, pcm: Tensor, pad_frames: int) -> Tensor:
        """Checked ``[samples]`` -> normalised, zero-padded ``[samples']`` in the weight dtype."""
        weight = self.feature_projection.projection.weight
        x = pcm.to(device=weight.device, dtype=torch.float64)
        if self.config.normalize:
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + NORM_EPS)
        x = F.pad(x, (0, pad_frames * int(self.config.sample_rate // self.fps)))
        return x.to(weight.dtype)

    def _wav2vec2_features(self, pcm: Tensor, frames: int, pad_frames: int) -> Tensor:
        """[samples] -> [frames, layers, hidden]; conv features resampled to ``frames`` before the transformer."""
        conv = self.feature_extractor(self._wav2vec2_input(pcm, pad_frames)[None])
        conv = F.interpolate(conv, size=frames, mode="linear", align_corners=True)
        return self.wav2vec2_levels(conv)

    def wav2vec2_levels(self, conv: Tensor) -> Tensor:
        """Conv features already at the frame rate ``[1, C, frames]`` -> kept levels ``[frames, layers, hidden]``."""
        hidden, _ = self.feature_projection(conv.transpose(1, 2))
        hidden = hidden + self.encoder.pos_conv_embed(hidden)
        if not self.encoder_config.do_stable_layer_norm:
            hidden = self.encoder.layer_norm(hidden)
        outputs = []
        for layer in self.encoder.layers:
            hidden = _layer_output(layer(hidden, attention_mask=None))
            outputs.append(hidden)
        return torch.stack(outputs, dim=2)[0, :, self.level_index]

    def whisper_levels(self, pcm: Tensor) -> Tensor:
        """Whisper level states of ``pcm`` ([samples] at 16 kHz): ``[steps, levels, d_model]`` at 50 Hz.

        The log-mel (:meth:`whisper_mel`) is encoded window by window; levels are the states after
        conv + positional embedding and after each block (no final layer norm), all of them, before
        the ``layers`` selection. Only the :func:`whisper_steps` that hold audio are kept.
        """
        if self.config.kind != "whisper":
            raise ValueError("whisper_levels needs a whisper audio encoder")
        return self._whisper_levels(self._check_pcm(pcm, None))

    def _whisper_levels(self, pcm: Tensor) -> Tensor:
        """:meth:`whisper_levels` of already-checked PCM."""
        return self.whisper_mel_levels(self.whisper_mel(pcm)).flatten(0, 1)[:whisper_steps(pcm.numel())]

    def whisper_mel(self, pcm: Tensor) -> Tensor:
        """Checked ``[samples]`` (at least 320) -> log-mel windows ``[windows, n_mels, 3000]`` (float32, CPU).

        EchoMimic's front end: power STFT of the whole audio (400-sample Hann window, hop 160,
        reflect-padded by 200 at both ends, the last frame dropped: ``samples // 160`` frames), mel
        filters, ``log10`` clamped at 1e-10 and then at the whole audio's maximum minus 8,
        ``(x + 4) / 4``; cut into 3000-frame windows, the last one padded with 0.0.
        """
        x = pcm.detach().to("cpu", torch.float32)
        stft = torch.stft(x, WHISPER_N_FFT, WHISPER_HOP, window=torch.hann_window(WHISPER_N_FFT),
                          return_complex=True)
        power = stft[:, :-1].abs() ** 2
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        log_spec = (torch.maximum(log_spec, log_spec.max() - WHISPER_LOG_RANGE) + 4.0) / 4.0
        windows = -(-log_spec.shape[1] // WHISPER_MEL_FRAMES)
        log_spec = F.pad(log_spec, (0, windows * WHISPER_MEL_FRAMES - log_spec.shape[1]))
        return log_spec.view(log_spec.shape[0], windows, WHISPER_MEL_FRAMES).transpose(0, 1).contiguous()

    def whisper_mel_levels(self, mel: Tensor) -> Tensor:
        """Log-mel windows ``[windows, n_mels, 3000]`` -> all level states ``[windows, 1500, levels, d_model]``."""
        weight = self.encoder.conv1.weight
        hidden = F.gelu(self.encoder.conv1(mel.to(device=weight.device, dtype=weight.dtype)))
        hidden = F.gelu(self.encoder.conv2(hidden)).transpose(1, 2)
        hidden = hidden + self.encoder.embed_positions.weight[: hidden.shape[1]]
        levels = [hidden]
        for layer in self.encoder.layers:
            hidden = _layer_output(layer(hidden, None))
            levels.append(hidden)
        return torch.stack(levels, dim=2)

    def _whisper_tokens(self, pcm: Tensor, frames: int) -> Tensor:
        """[samples] -> [frames, (4m+2)*levels, d_model] (EchoMimic's per-frame token layout)."""
        levels = self._whisper_levels(pcm)[:, self.level_index]
        return whisper_frame_tokens(levels, frames, self.fps, self.config.window)
