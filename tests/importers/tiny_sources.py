"""Write a tiny Hallo / EchoMimic checkout from a parity fixture, the way those systems ship their files.

A fixture folder (``fixtures/hallo_tiny``, ``fixtures/echomimic_tiny``, made by ``fixtures/make_fixtures.py``)
holds the layout of every shipped file (``layout.tsv``), the small config files, and the inputs and
outputs of their modules. The weights are :func:`synth.synth_tensor` of each shipped key, recomputed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from synth import synth_tensor

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HALLO = FIXTURES / "hallo_tiny"
ECHOMIMIC = FIXTURES / "echomimic_tiny"


def read_layout(fixture: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """role -> shipped key -> shape, from ``layout.tsv``."""
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for line in (fixture / "layout.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        role, key, shape = line.split("\t")
        out.setdefault(role, {})[key] = tuple(json.loads(shape))
    return out


def synth_state(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The stand-in tensors of one shipped file."""
    return {key: synth_tensor(key, shape) for key, shape in layout.items()}


def parity(fixture: Path) -> dict[str, torch.Tensor]:
    """The inputs and outputs their modules gave (``parity.safetensors``)."""
    return load_file(str(fixture / "parity.safetensors"))


def meta(fixture: Path) -> dict:
    return json.loads((fixture / "meta.json").read_text())


def _copy_configs(fixture: Path, dest: Path) -> None:
    shutil.copytree(fixture / "configs", dest, dirs_exist_ok=True)


def write_hallo(dest: Path) -> Path:
    """``dest/pretrained_models`` as Hallo ships it: ``hallo/net.pth``, ``sd-vae-ft-mse``, ``wav2vec/...``."""
    root = Path(dest) / "pretrained_models"
    layout = read_layout(HALLO)
    _copy_configs(HALLO, root)
    (root / "hallo").mkdir(parents=True, exist_ok=True)
    torch.save(synth_state(layout["net"]), root / "hallo" / "net.pth")
    save_file(synth_state(layout["vae"]), str(root / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"))
    save_file(synth_state(layout["wav2vec2"]), str(root / "wav2vec" / "wav2vec2-base-960h" / "model.safetensors"))
    return Path(dest)


def write_echomimic(dest: Path, motion_in_denoising: bool = False) -> Path:
    """``dest/pretrained_weights`` as EchoMimic ships it; ``motion_in_denoising`` puts the motion-module keys
    into ``denoising_unet.pth`` too (the full key set) instead of only ``motion_module.pth``."""
    root = Path(dest) / "pretrained_weights"
    layout = read_layout(ECHOMIMIC)
    _copy_configs(ECHOMIMIC, root)
    dims_file = root / "audio_processor" / "whisper_dims.json"
    dims = json.loads(dims_file.read_text())
    dims_file.unlink()
    motion = synth_state(layout["motion_module"])
    denoising = synth_state(layout["denoising_unet"])
    if motion_in_denoising:
        denoising.update(motion)
    for role, state in (("reference_unet", synth_state(layout["reference_unet"])), ("denoising_unet", denoising),
                        ("motion_module", motion), ("face_locator", synth_state(layout["face_locator"]))):
        torch.save(state, root / f"{role}.pth")
    torch.save({"dims": dims, "model_state_dict": synth_state(layout["whisper"])},
               root / "audio_processor" / "whisper_tiny.pt")
    save_file(synth_state(layout["vae"]), str(root / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"))
    return Path(dest)
