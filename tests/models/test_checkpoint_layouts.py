"""Our sd15 networks (meta device) against the exact layouts of Hallo and EchoMimic v1 checkpoints.

For each manifest the test reports how many keys our network takes as they are (same name, same
shape) and how many need a map, and fails if a key that matched in the committed baseline
(``layout_baseline.json``: the keys that did NOT match then) stops matching. Regenerate the baseline
only with a reason written in the issue note: ``python tests/models/test_checkpoint_layouts.py --update``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import read_manifest  # noqa: E402

from engine.config import AudioConfig, ModelConfig, preset  # noqa: E402
from engine.models.model import EmoteModel  # noqa: E402

BASELINE = Path(__file__).with_name("layout_baseline.json")


def hallo_config() -> ModelConfig:
    cfg = preset("sd15")
    cfg.face_locator.conditioning_channels = 3
    cfg.audio_modules.enabled = True
    cfg.image_proj.enabled = True
    return cfg


def echomimic_config() -> ModelConfig:
    cfg = preset("sd15")
    cfg.reference_net.cross_attention = False
    cfg.unet.cross_attention_dim = 384
    cfg.unet.cross_attention_scale = 3.0
    cfg.face_locator.block_out_channels = (16, 32, 96, 256)
    cfg.audio = AudioConfig(kind="whisper", encoder=dict(d_model=384, encoder_layers=4, encoder_attention_heads=6,
                                                         encoder_ffn_dim=1536, num_mel_bins=80,
                                                         max_source_positions=1500))
    return cfg


def _layouts() -> dict[str, tuple[str, dict[str, torch.Size]]]:
    hallo = EmoteModel.on_meta(hallo_config())
    echo = EmoteModel.on_meta(echomimic_config())

    def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    return {
        "hallo/reference_unet.tsv": shapes(hallo.reference_net),
        "hallo/denoising_unet.tsv": shapes(hallo.backbone),
        "hallo/face_locator.tsv": shapes(hallo.face_locator),
        "hallo/vae.tsv": shapes(hallo.vae.model),
        "hallo/audio_encoder_wav2vec2.tsv": shapes(hallo.audio_encoder),
        "hallo/audioproj.tsv": {k.split("audioproj.", 1)[1]: v for k, v in shapes(hallo.audio_encoder).items()
                                if k.startswith("audioproj.")},
        "echomimic_v1/reference_unet.tsv": shapes(echo.reference_net),
        "echomimic_v1/denoising_unet.tsv": shapes(echo.backbone),
        "echomimic_v1/face_locator.tsv": shapes(echo.face_locator),
        "echomimic_v1/vae.tsv": shapes(echo.vae.model),
        "echomimic_v1/audio_encoder_whisper_tiny.tsv": shapes(echo.audio_encoder),
    }


def compare() -> dict[str, dict[str, list[str]]]:
    """Per manifest: keys taken as they are, and keys that need a map (absent or shaped otherwise)."""
    out = {}
    for manifest, ours in _layouts().items():
        theirs = read_manifest(manifest)
        same = sorted(k for k, shape in theirs.items() if ours.get(k) == shape)
        out[manifest] = {"as_is": same, "needs_map": sorted(set(theirs) - set(same))}
    return out


@pytest.fixture(scope="module")
def comparison() -> dict[str, dict[str, list[str]]]:
    return compare()


def test_report_and_no_key_stops_matching(comparison, capsys):
    baseline = json.loads(BASELINE.read_text())
    with capsys.disabled():
        print("\nlayout  manifest: keys taken as they are / keys that need a map")
        for manifest, result in comparison.items():
            print(f"  {manifest:<45} {len(result['as_is']):>5} / {len(result['needs_map']):>5}")
    for manifest, result in comparison.items():
        newly_unmatched = set(result["needs_map"]) - set(baseline[manifest])
        assert not newly_unmatched, f"{manifest}: keys no longer match: {sorted(newly_unmatched)[:5]}"


def test_unet_layouts_match_in_full(comparison):
    """Every UNet, face-locator, VAE and projection key is named and shaped exactly as the peers' (Hallo's
    audio_modules included, with the config's ``audio_modules`` on); only the audio encoders need a map."""
    for manifest in ("hallo/reference_unet.tsv", "hallo/denoising_unet.tsv", "echomimic_v1/reference_unet.tsv",
                     "echomimic_v1/denoising_unet.tsv", "hallo/face_locator.tsv", "echomimic_v1/face_locator.tsv",
                     "hallo/vae.tsv", "hallo/audioproj.tsv"):
        assert comparison[manifest]["needs_map"] == [], manifest


if __name__ == "__main__" and "--update" in sys.argv:
    BASELINE.write_text(json.dumps({m: r["needs_map"] for m, r in compare().items()}, indent=1) + "\n")
    print(f"wrote {BASELINE}")
