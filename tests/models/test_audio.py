"""Audio encoders against transformers, the per-frame layouts, and Hallo's checkpoint layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import COMPAT, read_manifest
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model, WhisperConfig, WhisperModel

from engine.config import AudioConfig, ProjectionConfig
from engine.models.audio import AudioEncoder, AudioProjection, frame_windows, whisper_frame_tokens

# Kernels equal to strides: receptive field 320 samples = one 50 Hz step, so at fps=50 the conv
# frame count equals ceil(seconds * 50) when the sample count is a multiple of 320.
TINY_WAV2VEC2 = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=[16, 16, 16], conv_kernel=[10, 8, 4], conv_stride=[10, 8, 4],
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=32,
)
TINY_WHISPER = dict(
    d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, pad_token_id=50, bos_token_id=50,
    eos_token_id=50, decoder_start_token_id=50, max_source_positions=1500, num_mel_bins=80,
)
TINY_PROJECTION = ProjectionConfig(tokens=4, intermediate_dim=16, output_dim=24)


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def stacked_layers(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """transformers hidden_states[1:] (each [1, T, D]) -> [T, layers, D]."""
    return torch.stack(hidden_states[1:], dim=2)[0]


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wav2vec2")
    Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper")
    WhisperModel(WhisperConfig(**TINY_WHISPER)).save_pretrained(path)
    return path


def test_config_json_round_trip_and_validation() -> None:
    cfg = AudioConfig(encoder=TINY_WAV2VEC2, layers=[1], projection=TINY_PROJECTION)
    assert AudioConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert AudioConfig().projection == ProjectionConfig(32, 512, 768)
    assert AudioConfig(kind="whisper").projection is None
    with pytest.raises(ValueError, match="projection must be None"):
        AudioConfig(kind="whisper", projection=TINY_PROJECTION)
    with pytest.raises(ValueError, match="unknown audio config keys: .bogus."):
        AudioConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="sample_rate"):
        AudioConfig(sample_rate=22050)
    with pytest.raises(ValueError, match="out of range"):
        AudioEncoder(AudioConfig(encoder=TINY_WAV2VEC2, layers=[2], projection=TINY_PROJECTION), 25)


@pytest.mark.parametrize("stable_layer_norm", [False, True])
def test_wav2vec2_matches_transformers_at_50_fps(tmp_path: Path, stable_layer_norm: bool) -> None:
    torch.manual_seed(1)
    Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2, do_stable_layer_norm=stable_layer_norm)).save_pretrained(tmp_path)
    cfg = AudioConfig(normalize=False, projection=TINY_PROJECTION)
    ours = AudioEncoder.from_pretrained(tmp_path, cfg, fps=50)
    ref = Wav2Vec2Model.from_pretrained(tmp_path).eval()
    pcm = torch.randn(320 * 40)
    with torch.no_grad():
        got = ours.features(pcm)
        want = stacked_layers(ref(pcm[None], output_hidden_states=True).hidden_states)
    assert got.shape == (40, 2, 32)
    assert (got - want).abs().max() <= 1e-5


def test_wav2vec2_interpolates_before_the_transformer(wav2vec2_dir: Path) -> None:
    """fps 25, normalised input, 3 frames of Hallo-style padding: reference from transformers' own forward
    with the conv features resampled by a hook (feature_extractor -> linear interpolation -> the rest)."""
    ours = AudioEncoder.from_pretrained(wav2vec2_dir, AudioConfig(projection=TINY_PROJECTION), fps=25)
    ref = Wav2Vec2Model.from_pretrained(wav2vec2_dir).eval()
    pcm = 0.3 * torch.randn(16000 + 123) + 0.05
    frames = math.ceil(pcm.numel() * 25 / 16000) + 3
    normalised = Wav2Vec2FeatureExtractor(do_normalize=True)(pcm.numpy(), sampling_rate=16000, return_tensors="pt")
    padded = F.pad(normalised.input_values, (0, 3 * 640))
    hook = ref.feature_extractor.register_forward_hook(
        lambda module, args, out: F.interpolate(out, size=frames, mode="linear", align_corners=True)
    )
    with torch.no_grad():
        want = stacked_layers(ref(padded, output_hidden_states=True).hidden_states)
        got = ours.features(pcm, num_frames=frames)
        tokens = ours.tokens(pcm)
    hook.remove()
    assert got.shape == (29, 2, 32)
    assert (got - want).abs().max() <= 1e-5
    assert tokens.shape == (26, ours.output_tokens, ours.output_dim) == (26, 4, 24)

    last_only = AudioEncoder.from_pretrained(wav2vec2_dir, AudioConfig(layers=[1], projection=TINY_PROJECTION), fps=25)
    with torch.no_grad():
        assert torch.equal(last_only.features(pcm, num_frames=frames), got[:, [1]])


def test_hallo_style_state_dict_loads_without_renaming(wav2vec2_dir: Path) -> None:
    """Legacy weight-norm names (weight_g / weight_v, as in Hallo's file) load strictly."""
    cfg = AudioConfig(encoder=TINY_WAV2VEC2, projection=TINY_PROJECTION)
    source = AudioEncoder.from_pretrained(wav2vec2_dir, cfg, fps=25)
    legacy = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    state = {}
    for key, value in source.state_dict().items():
        for new, old in legacy.items():
            key = key.replace(new, old)
        state[key] = value
    assert "encoder.pos_conv_embed.conv.weight_g" in state
    torch.manual_seed(5)
    target = AudioEncoder(cfg, 25)
    target.load_state_dict(state, strict=True)
    pcm = torch.randn(8000)
    with torch.no_grad():
        assert torch.equal(target.tokens(pcm), source.tokens(pcm))


def echomimic_fixture_waveform() -> np.ndarray:
    """The waveform of ``fixtures/echomimic_frontend`` (its README): 2.3 s + 50 samples at 16 kHz, seeded."""
    rng = np.random.default_rng(22)
    t = np.arange(36850) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_whisper_log_mel_is_echomimics() -> None:
    """EchoMimic's own log-mel of the fixture waveform: the audio's own (reflect-padded) STFT, floor from
    the audio's maximum, windows padded with 0.0 -- not the log-mel of the waveform zero-padded to 30 s."""
    ours = AudioEncoder(AudioConfig(kind="whisper", encoder=TINY_WHISPER), 25)
    want = torch.from_numpy(np.load(COMPAT.parent / "echomimic_frontend" / "whisper_log_mel.npz")["mel"])
    got = ours.whisper_mel(torch.from_numpy(echomimic_fixture_waveform()))
    assert got.shape == want.shape == (1, 80, 3000)
    assert (got - want).abs().max() <= 1e-5


def test_whisper_levels_match_transformers(whisper_dir: Path) -> None:
    """30.5 s of audio: two 30 s windows; levels = hidden states before the final layer norm."""
    ours = AudioEncoder.from_pretrained(whisper_dir, AudioConfig(kind="whisper"), fps=25)
    ref = WhisperModel.from_pretrained(whisper_dir).eval().encoder
    pcm = 0.1 * torch.randn(480000 + 8000)
    captured = []
    hook = ref.layers[-1].register_forward_hook(lambda module, args, out: captured.append(out))
    windows = []
    with torch.no_grad():
        for mel in ours.whisper_mel(pcm):
            out = ref(mel[None], output_hidden_states=True)
            windows.append(torch.stack([*out.hidden_states[:-1], captured[-1]], dim=2)[0])
        got = ours.whisper_levels(pcm)
        tokens = ours.tokens(pcm)
    hook.remove()
    want = torch.cat(windows)[: pcm.numel() // 320]
    assert got.shape == (1525, 3, 32)
    assert (got - want).abs().max() <= 1e-5
    assert tokens.shape == (763, ours.output_tokens, ours.output_dim) == (763, 30, 32)
    assert (tokens - whisper_frame_tokens(want, 763, 25, 2)).abs().max() <= 1e-5


@pytest.mark.parametrize("fps", [25, 24])
def test_whisper_token_layout(fps: int) -> None:
    steps, levels, frames = 20, 3, 12
    values = 100 * torch.arange(steps)[:, None] + torch.arange(levels)[None, :]
    tokens = whisper_frame_tokens(values[:, :, None].float(), frames, fps, window=2)
    assert tokens.shape == (frames, 10 * levels, 1)
    for i in range(frames):
        centre = int(i * 50 / fps)
        for j in range(10):
            step = min(max(centre - 4 + j, 0), steps - 1)
            for level in range(levels):
                assert tokens[i, levels * j + level, 0] == 100 * step + level
    assert tokens[0, :, 0].tolist()[:15] == [0, 1, 2] * 5
    assert tokens[frames - 1, :, 0].tolist()[-3:] == [1900, 1901, 1902]


def test_frame_window_is_clamped() -> None:
    features = torch.arange(7.0)[:, None, None].expand(7, 3, 2)
    windows = frame_windows(features, 2)
    assert windows.shape == (7, 5, 3, 2)
    for f in range(7):
        assert windows[f, :, 1, 0].tolist() == [float(min(max(f + d, 0), 6)) for d in range(-2, 3)]
    assert windows[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert windows[6, :, 0, 0].tolist() == [4, 5, 6, 6, 6]


def test_projection_shape_and_order() -> None:
    torch.manual_seed(2)
    proj = AudioProjection(window_frames=5, layers=3, dim=8, intermediate_dim=16, tokens=4, output_dim=6)
    windows = torch.randn(7, 5, 3, 8)
    with torch.no_grad():
        out = proj(windows)
        hidden = torch.relu(proj.proj2(torch.relu(proj.proj1(windows.reshape(7, 120)))))
        want = proj.norm(proj.proj3(hidden).reshape(7, 4, 6))
        assert proj(windows[None]).shape == (1, 7, 4, 6)
    assert out.shape == (7, 4, 6)
    assert torch.allclose(out, want, atol=1e-6)


def test_projection_layout_matches_hallo_audioproj() -> None:
    with torch.device("meta"):
        proj = AudioProjection(window_frames=5, layers=12, dim=768, intermediate_dim=512, tokens=32, output_dim=768)
    manifest = read_manifest("hallo/audioproj.tsv")
    assert list(shapes(proj).items()) == list(manifest.items())


def test_wav2vec2_base_layout_matches_hallo_manifest() -> None:
    cfg = AudioConfig(encoder=json.loads((COMPAT / "tools/configs/wav2vec2-base-960h/config.json").read_text()))
    with torch.device("meta"):
        encoder = AudioEncoder(cfg, 25)
    ours = shapes(encoder)
    manifest = read_manifest("hallo/audio_encoder_wav2vec2.tsv")
    audioproj = read_manifest("hallo/audioproj.tsv")
    pos_conv = "encoder.pos_conv_embed.conv."
    ours_only = {k: v for k, v in ours.items() if manifest.get(k) != v}
    manifest_only = {k: v for k, v in manifest.items() if ours.get(k) != v}
    # Same tensors; torch's parametrized weight norm names them differently (legacy names load via torch's hook).
    assert manifest_only == {pos_conv + "weight_g": (1, 1, 128), pos_conv + "weight_v": (768, 48, 128)}
    assert ours_only == {
        pos_conv + "parametrizations.weight.original0": (1, 1, 128),
        pos_conv + "parametrizations.weight.original1": (768, 48, 128),
        **{"audioproj." + k: v for k, v in audioproj.items()},
    }
    assert sum(p.numel() for p in encoder.parameters()) == 94_371_712 + 36_465_152
    assert (encoder.output_tokens, encoder.output_dim) == (32, 768)


@pytest.fixture(scope="module")
def tiny_wav2vec2() -> AudioEncoder:
    torch.manual_seed(3)
    return AudioEncoder(AudioConfig(encoder=TINY_WAV2VEC2, projection=TINY_PROJECTION), 25)


@pytest.mark.parametrize(
    "pcm, kwargs, message",
    [
        (torch.zeros(0), {}, "audio is empty"),
        (torch.zeros(319), {}, "too short"),
        (torch.zeros(2, 16000), {}, "mono"),
        (torch.zeros(1, 16000), {}, "mono"),
        (torch.zeros(16000, dtype=torch.int16), {}, "float PCM"),
        (torch.zeros(16000), {"sample_rate": 44100}, "44100 Hz"),
        (torch.full((16000,), float("nan")), {}, "NaN"),
        (torch.zeros(16000), {"num_frames": 24}, "fewer than the 25 frames"),
        (torch.zeros(16000), {"num_frames": 0}, "at least 1"),
    ],
)
def test_bad_audio_raises(tiny_wav2vec2: AudioEncoder, pcm: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        tiny_wav2vec2.tokens(pcm, **kwargs)
    assert "\n" not in str(info.value)


def test_whisper_rejects_empty_audio_and_wrong_directory(whisper_dir: Path) -> None:
    encoder = AudioEncoder.from_pretrained(whisper_dir, AudioConfig(kind="whisper"), fps=25)
    with pytest.raises(ValueError, match="audio is empty"):
        encoder.tokens(torch.zeros(0))
    with pytest.raises(ValueError, match="holds a whisper model but the config asks for wav2vec2"):
        AudioEncoder.from_pretrained(whisper_dir, AudioConfig(), fps=25)
