"""Export each network to ONNX (fp32 and fp16), checked, into the keyed cache.

``python -m export.onnx_export --model tiny|DIR --out DIR [--size N] [--precision fp32|fp16]``

A network is traced (TorchScript exporter, opset 18) with every dynamic axis at an example size >= 2 and
saved as ``model.onnx`` with its weights in ``model.onnx.data`` beside it, one cache directory per export.
fp16 graphs are the fp32 graph converted on the ONNX side (timesteps and the audio network stay float32).
Every export is checked (``onnx.checker`` with shape inference, and the graph's input/output names and
dims against the network's declaration). Why this exporter and this fp16 path: docs/decisions.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from engine.models.checkpoint import CheckpointError, load_model, model_directory, random_model, resolve_config
from engine.models.model import EmoteModel
from export.engine_cache import CacheKey, EngineCache, default_cache_dir
from export.networks import NETWORK_NAMES, make_network
from export.networks.spec import PRECISIONS, Network, StreamShapes
from emote_kernels import dispatch

OPSET = 18
EXPORTER = "torchscript"
DATA_FILE = "model.onnx.data"
GRAPH_FILE = "model.onnx"
ONNX_DTYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
               torch.bool: onnx.TensorProto.BOOL}


def toolchain() -> dict[str, str]:
    """Versions and settings that change an exported graph (part of its cache key)."""
    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__, "opset": str(OPSET),
            "exporter": EXPORTER}


def onnx_key(network: Network, precision: str) -> CacheKey:
    """The cache key of ``network``'s graph at ``precision``."""
    gp = network.graph_precision(precision)
    size = 0 if network.name == "audio" else network.shapes.size
    return CacheKey(kind="onnx", network=network.name, weights=network.weights_digest(), precision=gp,
                    signature=network.signature(), versions=toolchain(), size=size)


def _float32_module(module: nn.Module) -> nn.Module:
    """The module itself when all its floating weights are float32, else a float32 copy."""
    floats = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if all(t.dtype == torch.float32 for t in floats):
        return module
    return copy.deepcopy(module).float()


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so that each comes after the producers of its inputs (the fp16 converter appends casts)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {waiting[0].name!r}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def convert_to_fp16(model: onnx.ModelProto, keep_float32: list[str]) -> onnx.ModelProto:
    """fp32 graph (already shape-inferred) -> fp16 weights and activations; ``keep_float32`` I/O stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(model, keep_io_types=keep_float32, disable_shape_infer=True)
    _topological_sort(converted.graph)
    return converted


def declare_outputs(model: onnx.ModelProto, network: Network) -> None:
    """Write the declared dims onto the graph outputs (the tracer leaves some of them unnamed or unknown)."""
    for spec, value in zip(network.outputs, model.graph.output):
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for d in spec.dims:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d


def check_graph(path: Path, network: Network, precision: str) -> onnx.ModelProto:
    """Run the checker (full: strict shape inference) and compare the graph's I/O with the declaration.

    Returns the graph without its weights. Raises :class:`ValueError` on any mismatch.
    """
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    gp = network.graph_precision(precision)
    for kind, specs, values in (("input", network.inputs, model.graph.input),
                                ("output", network.outputs, model.graph.output)):
        if [v.name for v in values] != [s.name for s in specs]:
            raise ValueError(f"{network.name}: graph {kind}s {[v.name for v in values]} "
                             f"differ from the declaration {[s.name for s in specs]}")
        for spec, value in zip(specs, values):
            tensor = value.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            if dims != list(spec.dims):
                raise ValueError(f"{network.name}: {kind} {spec.name} has dims {dims}, declared {list(spec.dims)}")
            if tensor.elem_type != ONNX_DTYPES[spec.torch_dtype(gp)]:
                raise ValueError(f"{network.name}: {kind} {spec.name} has ONNX type {tensor.elem_type}, "
                                 f"declared {spec.torch_dtype(gp)}")
    return model


@dataclass
class ExportInfo:
    """One exported graph: where, how big (``model.onnx`` + ``model.onnx.data``), how many nodes, how long."""

    network: str
    precision: str
    path: Path
    nodes: int
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "precision": self.precision, "path": str(self.path), "nodes": self.nodes,
                "bytes": self.bytes, "seconds": round(self.seconds, 2)}


def export_network(network: Network, directory: Path, precision: str = "fp32") -> ExportInfo:
    """Export ``network`` into ``directory`` (created) as ``model.onnx`` + ``model.onnx.data`` and check it.

    The module is traced in float32 on the device its weights are on, with every dynamic axis at
    its example size (:meth:`Network.export_dims`).
    """
    start = time.perf_counter()
    gp = network.graph_precision(precision)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = _float32_module(network.module()).eval()
    weights = next(itertools.chain(module.parameters(), module.buffers()), None)
    device = weights.device if weights is not None else torch.device("cpu")  # a codec without weights: CPU
    args = network.sample_input(precision="fp32", device=device)
    with tempfile.TemporaryDirectory(prefix="export-", dir=directory) as tmp:
        raw = Path(tmp) / "raw.onnx"
        traced = Path(tmp) / "traced.onnx"
        with torch.no_grad(), dispatch.forced("torch"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(traced), dynamo=False, opset_version=OPSET,
                              input_names=network.input_names, output_names=network.output_names,
                              dynamic_axes=network.dynamic_axes(), do_constant_folding=True)
        del module, args
        declared = onnx.load(str(traced), load_external_data=False)
        declare_outputs(declared, network)
        onnx.save_model(declared, str(raw))
        del declared
        inferred = Path(tmp) / "inferred.onnx"
        onnx.shape_inference.infer_shapes_path(str(raw), str(inferred))
        model = onnx.load(str(inferred), load_external_data=True)
        if gp == "fp16":
            keep = [s.name for s in network.inputs + network.outputs if s.dtype == "float32"]
            model = convert_to_fp16(model, keep)
        graph = directory / GRAPH_FILE
        onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=0)
        del model
    onnx.shape_inference.infer_shapes_path(str(graph), str(graph))
    checked = check_graph(graph, network, precision)
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return ExportInfo(network.name, gp, directory, len(checked.graph.node), size, time.perf_counter() - start)


def cached_export(cache: EngineCache, network: Network, precision: str, on_stale: str = "rebuild") -> Path:
    """The cache directory holding ``network``'s checked graph at ``precision``, exported when missing."""
    def build(target: Path) -> dict[str, Any]:
        info = export_network(network, target, precision)
        return {"nodes": info.nodes, "bytes": info.bytes, "shapes": network.shapes.to_dict()}

    return cache.get_or_build(onnx_key(network, precision), build, on_stale=on_stale)


def open_model(source: str) -> EmoteModel:
    """A model directory's weights, or a preset with the seeded random weights the CLI uses (seed 0)."""
    cfg = resolve_config(source)
    directory = model_directory(source)
    return load_model(directory) if directory is not None else random_model(cfg, seed=0)


def main(argv: list[str] | None = None) -> int:
    """Command line: export the networks of a model; one line per graph, a progress bar while working."""
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m export.onnx_export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a preset (tiny, sd15) or a model directory")
    parser.add_argument("--out", type=Path, default=None, help=f"cache directory (default {default_cache_dir()})")
    parser.add_argument("--size", type=int, default=None, help="portrait side in pixels (default: the model's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--networks", default=",".join(NETWORK_NAMES),
                        help=f"comma-separated subset of {','.join(NETWORK_NAMES)}")
    args = parser.parse_args(argv)
    try:
        names = [n.strip() for n in args.networks.split(",") if n.strip()]
        unknown = sorted(set(names) - set(NETWORK_NAMES))
        if unknown:
            raise ValueError(f"unknown networks: {', '.join(unknown)}; known: {', '.join(NETWORK_NAMES)}")
        model = open_model(args.model)
        shapes = StreamShapes.for_model(model.config, size=args.size)
        cache = EngineCache(args.out)
        rows = []
        for name in tqdm(names, desc="export", unit="net", file=sys.stderr):
            network = make_network(name, model, shapes)
            path = cached_export(cache, network, args.precision)
            meta = cache.metadata(onnx_key(network, args.precision))
            rows.append(f"{name:12s} {network.graph_precision(args.precision)}  {meta['nodes']:6d} nodes  "
                        f"{meta['bytes'] / 2**20:9.1f} MiB  {path}")
    except (ValueError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
