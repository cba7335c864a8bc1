"""The ``emote`` command line: help, info on presets (meta device) and model directories, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import preset

DEMO_DIR = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: emote" in out.stdout


@pytest.mark.parametrize("name", ["tiny", "sd15"])
def test_info_reports_parameters_per_component(name, capsys):
    assert main(["info", "--model", name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    counts = report["parameters"]
    assert set(counts) == {"reference_net", "backbone", "face_locator", "speed_encoder", "audio_encoder", "vae"}
    assert report["total"] == sum(counts.values())
    if name == "sd15":
        assert counts["reference_net"] == 859_508_800 and counts["vae"] == 83_653_863
        assert counts["backbone"] > 859_520_964 + 453_209_280
    else:
        assert sum(counts.values()) < 10_000_000


def test_info_on_a_model_directory_and_a_bad_path(tmp_path, capsys):
    preset("tiny").save(tmp_path / "config.json")
    assert main(["info", "--model", str(tmp_path)]) == 0
    assert "backbone" in capsys.readouterr().out
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emote: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, field", [
    ({"resolution": "sixty-four"}, "resolution"),
    ({"unet": 5}, "unet"),
    ({"clip_frames": 8.5}, "clip_frames"),
    ({"unet": {"block_out_channels": [32, "64", 64]}}, "unet.block_out_channels.1"),
    ({"temporal": {"mid_block": 1}}, "temporal.mid_block"),
    ({"audio": {"window": None}}, "audio.window"),
    ({"scheduler": {"num_train_timesteps": "1000"}}, "scheduler.num_train_timesteps"),
    ([1, 2], "must be a JSON object"),
    ({"preset": ["tiny"]}, "preset"),
    ({"audio": {"projection": {"tokens": 4, "intermediate_dim": 64, "output_dim": 64, "width": 1}}},
     "unknown audio projection keys: 'width'"),
    ({"fps": -25}, "fps: input should be greater than or equal to 1"),
    ({"clip_frames": 0}, "clip_frames: input should be greater than or equal to 1"),
    ({"clip_frames": 30}, "clip_frames + motion_frames: at most temporal.max_frames (24)"),
    ({"resolution": 100}, "resolution: must be a multiple of 32"),
    ({"sampling": {"steps": 0}}, "sampling.steps"),
    ({"sampling": {"cfg_audio": -1.0}}, "sampling.cfg_audio"),
    ({"sampling": {"motion_anchor": 1.5}}, "sampling.motion_anchor"),
    ({"sampling": {"noise": "frame"}}, "sampling.noise"),
    ({"unet": {"norm_num_groups": 12}}, "unet.norm_num_groups: must divide every UNet block width"),
    ({"motion_init": "noise"}, "motion_init"),
])
@pytest.mark.parametrize("command", ["info", "generate"])
def test_a_config_of_wrong_types_or_ranges_is_one_line_naming_field_and_file(tmp_path, capsys, change, field, command):
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    data = preset("tiny").to_dict()
    if isinstance(change, dict):
        for key, value in change.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data[key], dict) else value
    else:
        data = change
    config.write_text(json.dumps(data))
    args = ["info", "--model", str(config.parent)] if command == "info" else [
        "generate", "--model", str(config.parent), "--image", str(DEMO_DIR / "portrait.png"),
        "--audio", str(DEMO_DIR / "speech.wav"), "--out", str(tmp_path / "out.mp4"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"emote: error: {config}: ") and field in err[0], err
    assert not (tmp_path / "out.mp4").exists()


def _flags(parser) -> dict[str, object]:
    """Every option string of ``parser`` -> its action."""
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _subparser(name: str):
    from engine.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    return commands.choices[name]


def test_generation_flags_are_the_same_in_every_command():
    """generate, stream and serve read the same generation flags (one declaration), with the same choices."""
    from engine.backends import BACKENDS
    from engine.options import SAMPLER_NAMES
    from engine.sampling.samplers import SAMPLERS

    shared = ["--model", "--device", "--backend", "--size", "--steps", "--sampler", "--cfg-audio", "--cfg-ref",
              "--head-speed", "--clip", "--first-clip", "--schedule", "--group", "--seed", "--motion-anchor", "--noise"]
    assert tuple(SAMPLERS) == SAMPLER_NAMES
    commands = {name: _flags(_subparser(name)) for name in ("generate", "stream", "serve")}
    for flags in commands.values():
        assert set(shared) <= set(flags)
        assert tuple(flags["--backend"].choices) == BACKENDS and tuple(flags["--sampler"].choices) == SAMPLER_NAMES
    video = ["--out", "--png-dir", "--fps", "--face-box", "--require-face", "--quiet"]
    assert set(video) <= set(commands["generate"]) and set(video) <= set(commands["stream"])
    assert commands["serve"]["--first-clip"].default == 4 and commands["generate"]["--first-clip"].default is None


def test_serve_options_come_from_the_shared_flags():
    from engine.cli import _generation_options, build_parser

    args = build_parser().parse_args(["serve", "--steps", "3", "--cfg-audio", "2.5", "--head-speed", "0.5",
                                      "--schedule", "rolling", "--group", "3", "--idle-steps", "2",
                                      "--noise", "session"])
    options = _generation_options(args, idle_steps=args.idle_steps)
    assert (options.steps, options.cfg_audio, options.head_speed, options.schedule, options.group_frames,
            options.idle_steps, options.first_clip_frames, options.noise) == (3, 2.5, 0.5, "rolling", 3, 2, 4,
                                                                              "session")


def test_serve_runs_torchscript_on_the_cpu_unless_told():
    """A server traces once and runs faster for it; ``generate`` and ``stream`` keep eager torch (a short job
    would not earn the tracing back)."""
    from engine.backends import live_backend
    from engine.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve"]).backend is None
    assert live_backend(None, "cpu") == "torchscript" and live_backend(None, "cuda:0") == "torch"
    assert live_backend("onnxruntime", "cpu") == "onnxruntime"
    assert parser.parse_args(["generate", "--image", "a.png", "--audio", "a.wav", "--out", "a.mp4"]).backend == "torch"
    assert "torchscript on the CPU" in _flags(_subparser("serve"))["--backend"].help


def test_stream_from_a_live_source_runs_the_live_default(monkeypatch):
    """``stream --mic`` / ``--stdin-pcm`` is a live process like a server; ``stream --audio FILE`` is not."""
    import engine.pipeline
    from engine.stream.stats import StreamStats

    asked = []

    def fake_stream(request, source, live_status=True):
        asked.append(request.backend)
        return StreamStats(25.0)

    monkeypatch.setattr(engine.pipeline, "stream", fake_stream)
    root = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo"
    common = ["--image", str(root / "portrait.png"), "--out", "o.mp4", "--model", "tiny", "--quiet"]
    assert main(["stream", "--stdin-pcm", "16000", *common]) == 0
    assert main(["stream", "--audio", str(root / "speech.wav"), *common]) == 0
    assert main(["stream", "--stdin-pcm", "16000", "--backend", "onnxruntime", *common]) == 0
    assert asked == ["torchscript", "torch", "onnxruntime"]


def test_an_unknown_backend_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--backend", "jax"])
    assert exc.value.code == 2 and "invalid choice: 'jax'" in capsys.readouterr().err


def test_fractional_values_are_accepted_where_a_number_is_asked():
    """Only --size asks for a multiple (of 8): a guidance scale, a share or a frame rate may have a fraction."""
    from engine.cli import build_parser

    args = build_parser().parse_args(["generate", "--image", "a.png", "--audio", "a.wav", "--out", "a.mp4",
                                      "--cfg-ref", "3.5", "--motion-anchor", "0.5", "--fps", "29.97"])
    assert (args.cfg_ref, args.motion_anchor, args.fps) == (3.5, 0.5, 29.97)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--size", "100"])


def test_threads_set_the_compute_threads_count(capsys):
    """``--threads N`` reaches the CPU backend's compute thread of generate/stream and of serve's hub; out of
    range it is a usage error."""
    from engine.cli import _generation_options, _request, build_parser
    from engine.pipeline import GenerateRequest, open_session
    from engine.serve.hub import ServeConfig, SessionHub

    parser = build_parser()
    portrait = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo" / "portrait.png"
    args = parser.parse_args(["generate", "--image", str(portrait), "--audio", "a.wav", "--out", "a.mp4",
                              "--model", "tiny", "--threads", "1"])
    request = _request(GenerateRequest, args, _generation_options(args), offline=True, audio=Path(args.audio))
    session, _ = open_session(request)
    assert request.threads == 1 and session.backend.compute.threads == 1
    serve_args = parser.parse_args(["serve", "--model", "tiny", "--threads", "2"])
    hub = SessionHub.load(ServeConfig(model=serve_args.model, threads=serve_args.threads))
    assert hub.backend.compute.threads == 2
    with pytest.raises(ValueError, match="threads"):
        ServeConfig(threads=0)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["stream", "--threads", "0"])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err
