"""ONNX export of every tiny network: checked graphs, ONNX Runtime on the CPU against torch eager.

Tolerances (max abs difference against torch eager float32, on the networks' own output scales):
fp32 graphs 1e-4 for every network (audio tokens after a LayerNorm, ReferenceNet features, backbone
output, VAE images in [-1, 1] and latents); fp16 graphs 2e-2 (half precision end to end).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.config import AudioConfig, preset
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel
from export.engine_cache import EngineCache
from export.networks import NETWORK_NAMES, make_network
from export.networks.spec import Network, StreamShapes
from export.onnx_export import DATA_FILE, GRAPH_FILE, cached_export, main, onnx_key

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2


_SESSIONS: dict[Path, ort.InferenceSession] = {}


def ort_outputs(directory: Path, network: Network, inputs: tuple[torch.Tensor, ...],
                precision: str) -> list[np.ndarray]:
    if directory not in _SESSIONS:
        _SESSIONS[directory] = ort.InferenceSession(str(directory / GRAPH_FILE), providers=["CPUExecutionProvider"])
    session = _SESSIONS[directory]
    feeds = network.cast(dict(zip(network.input_names, inputs)), precision)
    return session.run(network.output_names, {k: v.numpy() for k, v in feeds.items()})


def torch_outputs(network: Network, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = network.module()(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x.astype(np.float32) - y).max()) for x, y in zip(a, b))


def profile_points(network: Network) -> list[dict[str, int]]:
    """The min, opt and max dims of every profile, without repeats."""
    points: list[dict[str, int]] = []
    for profile in network.profiles():
        for which in range(3):
            dims = network.dims_of({name: shapes[which] for name, shapes in profile.shapes.items()})
            if dims not in points:
                points.append(dims)
    return points


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_fp32_graph_matches_torch_at_every_profile_point(tiny_model: EmoteModel, tiny_shapes: StreamShapes,
                                                          exported: dict[str, Path], name: str) -> None:
    network = make_network(name, tiny_model, tiny_shapes)
    graph = onnx.load(str(exported[name] / GRAPH_FILE), load_external_data=False)
    assert graph.opset_import[0].version >= 18
    assert [i.name for i in graph.graph.input] == network.input_names
    worst = 0.0
    for seed, dims in enumerate(profile_points(network)):
        inputs = network.sample_input(dims, seed=seed)
        worst = max(worst, max_diff(ort_outputs(exported[name], network, inputs, "fp32"),
                                    torch_outputs(network, inputs)))
    assert worst <= FP32_TOLERANCE, f"{name}: ONNX Runtime differs from torch by {worst:.2e}"


def test_backbone_graph_reads_every_condition(tiny_model: EmoteModel, tiny_shapes: StreamShapes,
                                              exported: dict[str, Path]) -> None:
    """Changing any one conditioning input changes the exported backbone's output (none was traced away).

    The change is random noise: a constant shift would vanish in the group norms of the motion modules.
    """
    network = make_network("backbone", tiny_model, tiny_shapes)
    inputs = network.sample_input()
    base = ort_outputs(exported["backbone"], network, inputs, "fp32")[0]
    generator = torch.Generator().manual_seed(5)
    for i, name in enumerate(network.input_names):
        changed = list(inputs)
        noise = torch.randn(inputs[i].shape, generator=generator)
        changed[i] = ~inputs[i] if inputs[i].dtype == torch.bool else inputs[i] + 0.5 * noise
        out = ort_outputs(exported["backbone"], network, tuple(changed), "fp32")[0]
        assert np.abs(out - base).max() > 1e-4, f"the backbone graph ignores {name}"


def test_graphs_have_no_onehot_nodes(exported: dict[str, Path]) -> None:
    """No graph computes a shape through OneHot (what ``repeat_interleave`` exports to; TensorRT does not list
    IOneHotLayer among the layers that compute shape tensors): the reference bank is repeated per frame with
    expand + flatten. The tiny backbone had 21 before."""
    for name, directory in exported.items():
        graph = onnx.load(str(directory / GRAPH_FILE), load_external_data=False)
        assert not [n.name for n in graph.graph.node if n.op_type == "OneHot"], name


def test_weights_travel_in_the_data_file_beside_the_graph(tiny_model: EmoteModel, tiny_shapes: StreamShapes,
                                                          exported: dict[str, Path], tmp_path: Path) -> None:
    source = exported["vae_decoder"]
    graph = onnx.load(str(source / GRAPH_FILE), load_external_data=False)
    assert graph.graph.initializer and all(
        t.data_location == onnx.TensorProto.EXTERNAL and t.external_data[0].value == DATA_FILE
        for t in graph.graph.initializer)
    moved = tmp_path / "elsewhere"
    shutil.copytree(source, moved)
    network = make_network("vae_decoder", tiny_model, tiny_shapes)
    inputs = network.sample_input()
    assert max_diff(ort_outputs(moved, network, inputs, "fp32"), ort_outputs(source, network, inputs, "fp32")) == 0


@pytest.mark.parametrize("name", [n for n in NETWORK_NAMES if n != "audio"])
def test_fp16_graph_is_half_and_close_to_torch(tiny_model: EmoteModel, tiny_shapes: StreamShapes,
                                               onnx_cache: EngineCache, name: str) -> None:
    network = make_network(name, tiny_model, tiny_shapes)
    directory = cached_export(onnx_cache, network, "fp16")
    graph = onnx.load(str(directory / GRAPH_FILE), load_external_data=False)
    types = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
    for spec in network.inputs:
        expected = {"float": onnx.TensorProto.FLOAT16, "float32": onnx.TensorProto.FLOAT,
                    "bool": onnx.TensorProto.BOOL}[spec.dtype]
        assert types[spec.name] == expected, spec.name
    inputs = network.sample_input()
    diff = max_diff(ort_outputs(directory, network, inputs, "fp16"), torch_outputs(network, inputs))
    assert diff <= FP16_TOLERANCE, f"{name} fp16: {diff:.2e}"


def test_audio_network_is_float32_in_every_variant(tiny_model: EmoteModel, tiny_shapes: StreamShapes) -> None:
    network = make_network("audio", tiny_model, tiny_shapes)
    assert onnx_key(network, "fp16") == onnx_key(network, "fp32")


def test_audio_graph_gives_the_encoders_tokens(tiny_model: EmoteModel, tiny_shapes: StreamShapes,
                                               exported: dict[str, Path]) -> None:
    """prepare -> graph -> finish equals AudioEncoder.tokens, padding included (more frames than the audio)."""
    network = make_network("audio", tiny_model, tiny_shapes)
    pcm = torch.from_numpy(np.random.RandomState(2).randn(7000).astype(np.float32) * 0.1)
    for frames in (11, 14):
        feed = network.prepare(pcm, frames)
        outputs = ort_outputs(exported["audio"], network, tuple(feed.inputs.values()), "fp32")
        tokens = network.finish({"audio_tokens": torch.from_numpy(outputs[0])}, feed)
        with torch.no_grad():
            expected = tiny_model.audio_encoder.tokens(pcm, frames)
        assert (tokens - expected).abs().max() <= FP32_TOLERANCE


def test_command_line_exports_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", "tiny", "--out", str(tmp_path), "--networks", "vae_encoder"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("vae_encoder") and "nodes" in line
    assert len(list((tmp_path / "onnx").glob("vae_encoder-fp32-128px-*.json"))) == 1
    assert main(["--model", "tiny", "--out", str(tmp_path), "--networks", "unet"]) == 2
    assert "unknown networks: unet" in capsys.readouterr().err


def test_whisper_audio_graph_gives_the_encoders_tokens(tmp_path: Path) -> None:
    """EchoMimic's whisper path: log-mel windows through the graph, the per-frame gather outside it."""
    cfg = preset("tiny")
    cfg.audio = AudioConfig(kind="whisper", window=2, encoder=dict(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, pad_token_id=50, bos_token_id=50,
        eos_token_id=50, decoder_start_token_id=50, max_source_positions=1500, num_mel_bins=80))
    cfg.unet.cross_attention_dim = 32
    model = random_model(cfg, seed=1)
    network = make_network("audio", model, StreamShapes.for_model(cfg))
    assert network.input_names == ["mel"] and network.output_names == ["levels"]
    directory = cached_export(EngineCache(tmp_path), network, "fp32")
    pcm = torch.from_numpy(np.random.RandomState(3).randn(9000).astype(np.float32) * 0.1)
    feed = network.prepare(pcm, 15)
    outputs = ort_outputs(directory, network, (feed.inputs["mel"],), "fp32")
    tokens = network.finish({"levels": torch.from_numpy(outputs[0])}, feed)
    with torch.no_grad():
        expected = model.audio_encoder.tokens(pcm, 15)
    assert tokens.shape == expected.shape and (tokens - expected).abs().max() <= FP32_TOLERANCE
