"""Weights: model directories (config.json + one safetensors file per component) and checked loading.

Checkpoints are untrusted input: safetensors, or ``torch.load(weights_only=True)`` for ``.pth``
files; a pickle that needs code to load is refused. Every mismatch error names the first missing,
unexpected and wrongly shaped keys.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from engine.config import PRESETS, ModelConfig, preset
from engine.models.model import EmoteModel

CONFIG_FILE = "config.json"
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
"""Trained models that ship with the engine, one directory each, named by their directory."""


def model_directory(source: str | Path) -> Path | None:
    """The model directory ``source`` names: an existing directory, or the name of a shipped model
    (``engine/assets/models/<name>``); None for anything else (a preset name, a missing path)."""
    path = Path(source)
    if path.is_dir():
        return path
    shipped = SHIPPED_MODELS / str(source)
    if path.name == str(source) and (shipped / CONFIG_FILE).is_file():
        return shipped
    return None


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the network."""


def read_torch_object(path: Path) -> object:
    """What a ``.pth``/``.pt``/``.bin``/``.ckpt`` file holds, loaded with ``weights_only=True`` on the CPU.

    Only tensors and plain containers and numbers load; a pickle that needs code is refused with a
    one-line :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise CheckpointError(f"{path}: refused, loading it would run code ({first_line})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt``/``.bin``/``.ckpt`` loaded with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    state = read_torch_object(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a flat state dict of tensors")
    return state


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                 allow_missing: Callable[[str], bool] = lambda key: False,
                 ignore_unexpected: Callable[[str], bool] = lambda key: False) -> None:
    """Load ``state`` into ``module``; raise :class:`CheckpointError` on any mismatch not allowed.

    ``allow_missing(key)`` marks module keys the checkpoint may lack (they keep their values);
    ``ignore_unexpected(key)`` marks checkpoint keys the module has no place for and drops them.
    A module on the meta device is materialised from the checkpoint (``assign``).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not allow_missing(k)]
    unexpected = [k for k in state if k not in expected and not ignore_unexpected(k)]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (first: {k} {list(state[k].shape)} "
                         f"vs {list(expected[k].shape)})")
        raise CheckpointError(f"{source}: " + ", ".join(parts))
    usable = {k: v for k, v in state.items() if k in expected}
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict(usable, strict=False, assign=on_meta)


def save_model(model: EmoteModel, directory: Path, extra_files: dict[str, str] | None = None) -> None:
    """Write ``config.json`` and ``<component>.safetensors`` files; atomic (a temporary sibling, then a rename).

    ``extra_files``: file name -> text written beside them (e.g. an import's ``provenance.json``).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.config.save(tmp / CONFIG_FILE)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for name, module in model.components().items():
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(tmp / f"{name}.safetensors"), metadata={"component": name})
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_config(source: str | Path) -> ModelConfig:
    """The config of a model directory, a shipped model's name or a preset name."""
    path = model_directory(source)
    if path is not None:
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path}: not a model directory (no {CONFIG_FILE})")
        return ModelConfig.load(path / CONFIG_FILE)
    if str(source) in PRESETS:
        return preset(str(source))
    shipped = sorted(p.name for p in SHIPPED_MODELS.glob(f"*/{CONFIG_FILE}"))
    raise CheckpointError(f"{source}: neither a model directory, a shipped model ({', '.join(shipped) or 'none'}) "
                          f"nor a preset ({', '.join(sorted(PRESETS))})")


def load_model(directory: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               config: ModelConfig | None = None) -> EmoteModel:
    """Load a model directory (or a shipped model by name). Built on the meta device and materialised from
    the files (no double memory). ``config``: the directory's config with settings changed that change no
    weight shapes (e.g. Hallo's region weights); None: the directory's own."""
    directory = model_directory(directory) or Path(directory)
    cfg = config if config is not None else resolve_config(directory)
    model = EmoteModel.on_meta(cfg)
    for name, module in model.components().items():
        load_checked(module, read_state_dict(directory / f"{name}.safetensors"), f"{directory / name}.safetensors")
    model.sync_default_context()
    model.to(device=device, dtype=dtype)
    return model.eval()


def random_model(cfg: ModelConfig, seed: int = 0) -> EmoteModel:
    """A model with freshly initialised weights (deterministic in ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmoteModel(cfg).eval()


def is_new_in_backbone(key: str) -> bool:
    """Backbone keys an SD1.5 UNet does not have: motion modules (AnimateDiff) and speed layers."""
    return ".motion_modules." in key


def load_sd15_unet(model: EmoteModel, source: Path) -> None:
    """Load a diffusers SD1.5 UNet (directory or weights file) into the ReferenceNet and the backbone.

    The same names serve both, without renaming. The ReferenceNet has no output head (and, when
    configured without cross-attention, no ``attn2``/``norm2``): those keys are dropped for it. The
    backbone keeps its motion modules and speed layers as they are (SD1.5 has none).
    """
    source = Path(source)
    if source.is_dir():
        candidates = [source / "diffusion_pytorch_model.safetensors",
                      source / "unet" / "diffusion_pytorch_model.safetensors"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{source}: no diffusion_pytorch_model.safetensors in it or in unet/")
        source = found
    state = read_state_dict(source)
    reference_keys = set(model.reference_net.state_dict())

    def refnet_drops(key: str) -> bool:
        head = key.startswith(("conv_norm_out.", "conv_out."))
        cross = (".attn2." in key or ".norm2." in key) and ".transformer_blocks." in key
        return head or (cross and key not in reference_keys)

    load_checked(model.reference_net, state, f"{source} -> reference_net", ignore_unexpected=refnet_drops)
    load_checked(model.backbone, state, f"{source} -> backbone", allow_missing=is_new_in_backbone)
