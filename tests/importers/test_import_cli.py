"""``emote import`` on tiny checkouts: the report, strictness and its flags, provenance, unsafe files."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_sources import write_echomimic

from engine.cli import main
from engine.importers.provenance import PROVENANCE_FILE, fallback_note
from engine.importers.sources import sha256_file
from engine.models.checkpoint import load_model


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_import_prints_what_it_mapped_and_dropped(hallo_src, tmp_path, capsys):
    code, out, _ = run(capsys, "import", "--from", "hallo", "--src", str(hallo_src), "--out", str(tmp_path / "m"))
    assert code == 0
    assert "net" in out and "unknown" in out
    assert "denoising_unet\\.(.+)  ->  backbone:\\1" in out
    assert "2  CTC head (Hallo keeps the hidden states only)" in out
    assert "fallback: face embedding" in out
    assert (tmp_path / "m" / "image_proj.safetensors").is_file()


def test_provenance_records_files_and_hashes_and_info_shows_it(hallo_model, hallo_src, capsys):
    data = json.loads((hallo_model / PROVENANCE_FILE).read_text())
    assert (data["system"], data["variant"]) == ("hallo", "standard")
    assert [f["role"] for f in data["files"]] == ["net", "vae", "wav2vec2", "unet config", "vae config",
                                                  "wav2vec2 config"]
    net = next(f for f in data["files"] if f["role"] == "net")
    assert net["path"] == "pretrained_models/hallo/net.pth"
    assert net["sha256"] == sha256_file(hallo_src / net["path"])
    code, out, _ = run(capsys, "info", "--model", str(hallo_model))
    assert code == 0
    assert "imported     hallo (standard)" in out and net["sha256"] in out
    code, out, _ = run(capsys, "info", "--model", str(hallo_model), "--json")
    assert json.loads(out)["provenance"]["files"][0]["sha256"] == data["files"][0]["sha256"]


def test_fallback_note_is_one_line(hallo_model, echomimic_model, tmp_path):
    note = fallback_note(hallo_model)
    assert note.startswith("note: hallo import runs with fallbacks:") and "\n" not in note
    assert "zero embedding" in note and "vocal separation" in note
    assert fallback_note(echomimic_model).startswith("note: echomimic import")
    assert fallback_note(tmp_path) is None


def test_unknown_key_fails_naming_it_unless_allowed(hallo_src, tmp_path, capsys):
    src = copy_tree(hallo_src, tmp_path / "src")
    net_path = src / "pretrained_models" / "hallo" / "net.pth"
    state = torch.load(net_path, weights_only=True)
    state["denoising_unet.extra_head.weight"] = torch.zeros(2)
    state["stray.bias"] = torch.zeros(2)
    torch.save(state, net_path)
    code, _, err = run(capsys, "import", "--from", "hallo", "--src", str(src), "--out", str(tmp_path / "m"))
    assert code == 2 and "2 unknown keys" in err and "denoising_unet.extra_head.weight" in err
    assert "--allow-unknown" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
    code, out, _ = run(capsys, "import", "--from", "hallo", "--src", str(src), "--out", str(tmp_path / "m"),
                       "--allow-unknown")
    assert code == 0 and "2  unknown keys, dropped by --allow-unknown" in out


def test_missing_key_fails_naming_it_unless_allowed(hallo_src, tmp_path, capsys):
    src = copy_tree(hallo_src, tmp_path / "src")
    net_path = src / "pretrained_models" / "hallo" / "net.pth"
    state = torch.load(net_path, weights_only=True)
    del state["face_locator.conv_out.weight"]
    torch.save(state, net_path)
    code, _, err = run(capsys, "import", "--from", "hallo", "--src", str(src), "--out", str(tmp_path / "m"))
    assert code == 2 and "1 missing keys (first: face_locator:conv_out.weight" in err
    code, out, _ = run(capsys, "import", "--from", "hallo", "--src", str(src), "--out", str(tmp_path / "m"),
                       "--allow-missing")
    assert code == 0 and "missing in face_locator: 1 keys keep their initial values" in out
    assert load_file(str(tmp_path / "m" / "face_locator.safetensors"))["conv_out.weight"].abs().max() == 0


def test_wrong_shape_always_fails(hallo_src, tmp_path, capsys):
    src = copy_tree(hallo_src, tmp_path / "src")
    net_path = src / "pretrained_models" / "hallo" / "net.pth"
    state = torch.load(net_path, weights_only=True)
    state["imageproj.norm.bias"] = torch.zeros(3)
    torch.save(state, net_path)
    code, _, err = run(capsys, "import", "--from", "hallo", "--src", str(src), "--out", str(tmp_path / "m"),
                       "--allow-unknown", "--allow-missing")
    assert code == 2 and "imageproj.norm.bias [3] vs ours [24]" in err


class _NeedsCode:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pickle_that_needs_code_is_refused_naming_the_file(hallo_src, tmp_path, capsys):
    src = copy_tree(hallo_src, tmp_path / "src")
    net_path = src / "pretrained_models" / "hallo" / "net.pth"
    with open(net_path, "wb") as f:
        pickle.dump({"x": _NeedsCode()}, f, protocol=2)
    code, out, err = run(capsys, "import", "--from", "hallo", "--src", str(src), "--out", str(tmp_path / "m"))
    assert code == 2 and "net.pth: refused, loading it would run code" in err
    assert "this would run" not in out and len(err.strip().splitlines()) == 1


def test_missing_file_is_named(tmp_path, capsys):
    code, _, err = run(capsys, "import", "--from", "echomimic", "--src", str(tmp_path), "--out", str(tmp_path / "m"))
    assert code == 2 and "no reference_unet" in err and "reference_unet.pth" in err


def test_echomimic_motion_keys_may_sit_in_either_file(echomimic_model, tmp_path, capsys):
    src = write_echomimic(tmp_path / "full", motion_in_denoising=True)
    (src / "pretrained_weights" / "motion_module.pth").unlink()
    code, out, _ = run(capsys, "import", "--from", "echomimic", "--src", str(src), "--out", str(tmp_path / "m"))
    assert code == 0 and "motion_module   skipped: optional, not present" in out
    merged = load_file(str(echomimic_model / "backbone.safetensors"))
    single = load_file(str(tmp_path / "m" / "backbone.safetensors"))
    assert merged.keys() == single.keys() and all(torch.equal(merged[k], single[k]) for k in merged)


def test_echomimic_base_unet_fills_only_what_the_files_lack(echomimic_src, tmp_path, capsys):
    src = copy_tree(echomimic_src, tmp_path / "src")
    root = src / "pretrained_weights"
    denoising = torch.load(root / "denoising_unet.pth", weights_only=True)
    base = {k: v.clone() + 1 for k, v in denoising.items()}
    base["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(32, 768)
    key = "conv_in.weight"
    del denoising[key]
    torch.save(denoising, root / "denoising_unet.pth")
    (root / "sd-image-variations-diffusers" / "unet").mkdir(parents=True, exist_ok=True)
    torch.save(base, root / "sd-image-variations-diffusers" / "unet" / "diffusion_pytorch_model.bin")
    code, out, _ = run(capsys, "import", "--from", "echomimic", "--src", str(src), "--out", str(tmp_path / "m"))
    assert code == 0 and "initial values only: 1 keys the other files lack" in out
    loaded = load_file(str(tmp_path / "m" / "backbone.safetensors"))
    torch.testing.assert_close(loaded[key], base[key])


def test_echomimic_acc_variant_and_float16(echomimic_src, tmp_path, capsys):
    src = copy_tree(echomimic_src, tmp_path / "src")
    root = src / "pretrained_weights"
    for stem in ("denoising_unet", "motion_module"):
        shutil.copy(root / f"{stem}.pth", root / f"{stem}_acc.pth")
    code, out, _ = run(capsys, "import", "--from", "echomimic", "--src", str(src), "--out", str(tmp_path / "m"),
                       "--variant", "acc", "--dtype", "float16")
    assert code == 0 and "denoising_unet_acc.pth" in out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["sampling"] == {"steps": 6, "sampler": "ddim", "cfg_audio": 1.0, "cfg_ref": 1.0,
                                  "motion_anchor": None, "noise": None}
    assert load_file(str(tmp_path / "m" / "backbone.safetensors"))["conv_in.weight"].dtype == torch.float16
    assert load_model(tmp_path / "m", dtype=torch.float32).backbone.conv_in.weight.dtype == torch.float32


def test_unknown_variant_and_system_are_one_line_errors(hallo_src, tmp_path, capsys):
    code, _, err = run(capsys, "import", "--from", "hallo", "--src", str(hallo_src), "--out", str(tmp_path / "m"),
                       "--variant", "acc")
    assert code == 2 and "hallo has no variant 'acc'" in err
