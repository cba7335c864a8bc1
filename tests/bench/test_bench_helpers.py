"""The harness's pure parts: stage arithmetic, ratios, formatting, the layout check, call specs, speech."""

from __future__ import annotations

import math

import pytest
import torch

from bench.harness import default_settings, ratios, result_stem, stage_figures
from bench.recipes import engine_specs, tiny_decoder_vae
from bench.recording import Call, ListSpec, TensorSpec, materialise, spec_of
from bench.report import format_figure, format_number, format_ratio, markdown_table, validate
from bench.speech import SAMPLE_RATE, speech_pcm
from bench.timing import Figure, matmul_flops
from engine.config import preset


def _call(network: str, phase: str, first_shape: tuple[int, ...]) -> Call:
    return Call(network, phase, (TensorSpec(first_shape, "torch.float32"),), ())


def test_figure_median_and_spread():
    figure = Figure([3.0, 1.0, 2.0])
    assert (figure.median, figure.min, figure.max) == (2.0, 1.0, 3.0)
    assert figure.scaled(10).to_json() == {"median": 20.0, "min": 10.0, "max": 30.0, "values": [30.0, 10.0, 20.0]}
    assert matmul_flops(1024) == 2 * 1024**3


def test_stage_figures_per_unit_arithmetic():
    backbone_first = _call("backbone", "stream", (1, 4, 1, 2, 2))
    backbone_clip = _call("backbone", "stream", (1, 4, 8, 2, 2))
    decode = _call("vae_decode", "stream", (8, 4, 2, 2))
    audio = _call("audio_tokens", "stream", (16000,))
    reference_session = _call("reference", "session", (1, 4, 2, 2))
    reference_clip = _call("reference", "stream", (4, 4, 2, 2))
    calls = ([reference_session] + [audio] * 2 + [backbone_first] * 4 + [backbone_clip] * 4 + [decode]
             + [reference_clip] * 2)
    times = {backbone_first.signature: Figure([0.5, 0.7]), backbone_clip.signature: Figure([1.6, 2.4]),
             decode.signature: Figure([0.8, 1.6]), audio.signature: Figure([0.1, 0.3]),
             reference_session.signature: Figure([0.2, 0.2]), reference_clip.signature: Figure([0.3, 0.5])}
    stages, breakdown = stage_figures(calls, times, frames_out=9, clips=2, media_s=0.36, repeats=2)

    assert stages["backbone_per_step_per_frame_s"].values == pytest.approx([0.2, 0.3]), "at the longest clip"
    assert stages["vae_decode_per_frame_s"].values == pytest.approx([0.1, 0.2])
    assert stages["audio_encoder_s_per_media_s"].values == pytest.approx([0.2 / 0.36, 0.6 / 0.36])
    assert stages["reference_net_per_session_s"].values == pytest.approx([0.2, 0.2])
    assert stages["reference_net_per_clip_s"].values == pytest.approx([0.3, 0.5])
    assert stages["vae_encode_per_clip_s"] is None
    assert breakdown["backbone"] == pytest.approx((4 * 0.6 + 4 * 2.0) / 9)
    assert breakdown["ReferenceNet"] == pytest.approx(2 * 0.4 / 9), "the per-session call is not per frame"


def _config(name: str, recipe: str, fps: float, latency: float, flops: float) -> dict:
    def fig(v: float) -> dict:
        return {"median": v, "min": v, "max": v, "values": [v]}

    return {"name": name, "recipe": recipe, "end_to_end": {"offline_fps": fig(fps), "latency_p95_s": fig(latency),
                                                           "time_to_first_frame_s": None},
            "stages": {"vae_encode_per_clip_s": fig(0.5) if recipe == "reference" else None},
            "flops": {"per_frame": flops}}


def test_ratios_are_engine_over_reference_medians():
    configs = [_config("reference", "reference", 2.0, 10.0, 100.0),
               _config("engine-4step-kl", "engine", 50.0, 0.5, 4.0)]
    row = ratios(configs)["engine-4step-kl"]
    assert row["offline_fps"] == pytest.approx(25.0)
    assert row["latency_p95_s"] == pytest.approx(0.05)
    assert row["flops_per_frame"] == pytest.approx(0.04)
    assert row["time_to_first_frame_s"] is None and row["vae_encode_per_clip_s"] is None


def test_number_and_figure_formatting():
    assert format_number(None) == "-"
    assert format_number(0.0) == "0"
    assert format_number(12.345) == "12.3"
    assert format_number(0.012345) == "0.0123"
    assert format_number(123456.0) == "123,456"
    assert format_number(1.5e8) == "1.50e+08"
    assert format_ratio(25.0) == "25.0x"
    figure = {"median": 0.0123, "min": 0.011, "max": 0.0141, "values": [0.011, 0.0123, 0.0141]}
    assert format_figure(figure, 1000.0) == "12.3 (11.0–14.1)"
    assert format_figure({**figure, "values": [0.0123]}, 1000.0) == "12.3"
    assert format_figure(None) == "-"


def test_markdown_table_shape():
    table = markdown_table(("a", "b"), [("1", "2")])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    with pytest.raises(ValueError):
        markdown_table(("a", "b"), [("1",)])


def test_validate_names_what_is_missing():
    problems = validate({"schema": "emote-bench/1"})
    assert problems and "missing" in problems[0]


def test_call_specs_and_materialised_inputs():
    spec = spec_of([torch.zeros(2, 3), None, 5])
    assert spec == ListSpec((TensorSpec((2, 3), "torch.float32"), None, 5))
    ints = materialise(TensorSpec((2, 4), "torch.int64"), "cpu")
    assert ints.dtype == torch.int64 and bool((ints == 500).all())
    assert bool(materialise(TensorSpec((2,), "torch.bool"), "cpu").all())
    meta = materialise(TensorSpec((2, 3), "torch.float16"), "meta", torch.float32)
    assert meta.is_meta and meta.dtype == torch.float32
    call = Call("backbone", "stream", (TensorSpec((2, 4, 8, 2, 2), "torch.float16"),), ())
    assert (call.batch(), call.frames()) == (2, 8)


def test_tiny_decoder_is_taesd_at_sd_scale():
    sd = tiny_decoder_vae(preset("sd15"))
    assert sd.kind == "tiny" and sd.config["decoder_block_out_channels"] == [64] * 4
    assert sd.config["num_decoder_blocks"] == [3, 3, 3, 1]
    assert tiny_decoder_vae(preset("tiny")).config["decoder_block_out_channels"] == [8] * 4


def test_engine_configurations():
    names = [s.name for s in engine_specs()]
    assert names == ["engine-4step-kl", "engine-2step-kl", "engine-1step-kl",
                     "engine-4step-tiny", "engine-2step-tiny", "engine-1step-tiny"]
    assert all(s.guidance == 1.0 for s in engine_specs())


def test_speech_is_the_demo_repeated_to_length():
    pcm = speech_pcm(7.5)
    assert pcm.size == 7.5 * SAMPLE_RATE and pcm.dtype.name == "float32"
    assert math.isfinite(float(abs(pcm).max())) and abs(pcm).max() > 0.01


def test_result_file_names_name_a_subset_of_configurations():
    assert result_stem(default_settings("tiny", "cpu"), 128) == "tiny-128"
    assert result_stem(default_settings("sd15", "cuda", decoders=("kl",)), 512) == "sd15-512-kl"
    assert result_stem(default_settings("sd15", "cuda", steps=(4,)), 512) == "sd15-512-steps4"


@pytest.mark.parametrize("module", ["bench.__main__", "bench.backends", "bench.batching", "bench.schedules",
                                    "bench.sessions"])
def test_bench_commands_share_their_common_flags(module):
    """The common flags come from bench/cli.py: one type and destination for every command that takes them."""
    import importlib

    parse_args = importlib.import_module(module).parse_args
    args = parse_args(["--device", "cpu", "--stream-seconds", "1.5", "--repeats", "2", "--threads", "1",
                       "--smoke", "--out-dir", "out"])
    assert (args.device, args.stream_s, args.repeats, args.threads, args.smoke) == ("cpu", 1.5, 2, 1, True)
    assert str(args.out_dir) == "out" and not isinstance(args.out_dir, str)


def test_a_command_keeps_its_own_defaults_for_common_flags():
    from bench import batching, bench_kernels, bench_reference_attention, sessions
    from bench.cli import COMMON_FLAGS

    assert (bench_kernels.parse_args([]).warmup, bench_kernels.parse_args([]).repeats) == (10, 50)
    reference = bench_reference_attention.parse_args([])
    assert (reference.device, reference.warmup, reference.repeats) == ("cuda", 5, 20)
    assert batching.parse_args([]).backend == "torch"
    assert sessions.parse_args([]).backend is None, "the sessions benchmark runs emote serve's default"
    assert sessions.SessionsSettings().backend == "torchscript"
    assert sessions.SessionsSettings(device="cuda").backend == "torch"
    assert COMMON_FLAGS["backend"][1].get("default") is None
