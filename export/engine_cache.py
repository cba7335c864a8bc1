"""Where exported graphs and TensorRT plans live, and when one may be used.

Every artifact (an ONNX directory, a TensorRT plan, or an exported graph as ONNX Runtime optimised it for
one CPU) is stored under a path keyed by everything that makes it stale: the network, a hash of its
weights, its graph signature (input/output names and shapes, so the portrait size), the precision, the
optimisation profiles, the tool versions (torch, onnx, opset and exporter for a graph; TensorRT for a
plan) and, for a plan, the GPU's compute capability. Beside each artifact sits ``<artifact>.json``: the
full key it was built for, plus file sizes and checksums, written last, so an artifact without metadata
is an interrupted build.

An artifact whose recorded metadata does not match the key asked for is never used: it is rebuilt
(``on_stale="rebuild"``) or refused with a :class:`StalePlanError` that names each difference
(``on_stale="refuse"``). Other plans of the same network built for another TensorRT version, GPU or
size are listed in the error when no usable plan exists, so "why is it rebuilding?" has an answer.

Pure Python: nothing here imports TensorRT or a GPU library.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

CACHE_FORMAT = 1
"""Bumped when the layout or the meaning of a key changes: every older artifact becomes stale."""

CACHE_ENV = "EMOTE_CACHE_DIR"
KIND_DIRS = {"onnx": "onnx", "plan": "plans", "ort": "ort-optimized"}
ON_STALE = ("rebuild", "refuse")


def default_cache_dir() -> Path:
    """``$EMOTE_CACHE_DIR``, else ``~/.cache/emote``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "emote"


class StalePlanError(RuntimeError):
    """An artifact exists where a key points but was built for something else (or is incomplete)."""


@dataclass(frozen=True)
class CacheKey:
    """Everything that makes an artifact stale.

    Attributes:
        kind: ``"onnx"`` (an exported graph), ``"plan"`` (a TensorRT engine) or ``"ort"`` (an exported graph
            as ONNX Runtime optimised it: its versions hold ONNX Runtime's, the CPU's and the exported graph's).
        network: network name (``"backbone"``, ...).
        weights: SHA-256 of the network's weights.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        signature: graph input/output names and dims (fixed sizes and dynamic axis names).
        profiles: TensorRT optimisation profiles (plans only; ``[]`` for graphs).
        versions: tool versions and settings that change the output (torch, onnx, opset, exporter,
            tensorrt, ...).
        compute_capability: the GPU's ``"major.minor"`` (plans only; ``""`` for graphs).
        size: portrait side in pixels, for readable file names (0 when size-independent).
        format: :data:`CACHE_FORMAT`.
    """

    kind: str
    network: str
    weights: str
    precision: str
    signature: dict[str, Any]
    profiles: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    compute_capability: str = ""
    size: int = 0
    format: int = CACHE_FORMAT

    def __post_init__(self) -> None:
        if self.kind not in KIND_DIRS:
            raise ValueError(f"cache key kind must be one of {', '.join(KIND_DIRS)}, got {self.kind!r}")
        if self.kind == "plan" and not (self.versions.get("tensorrt") and self.compute_capability):
            raise ValueError("a plan key needs the TensorRT version and the GPU compute capability")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (round-trips through :func:`json.dumps`)."""
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of every field, hex."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        """``<network>-<precision>[-<size>px]-<digest[:16]>[.plan]``."""
        size = f"-{self.size}px" if self.size else ""
        suffix = ".plan" if self.kind == "plan" else ""
        return f"{self.network}-{self.precision}{size}-{self.digest()[:16]}{suffix}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": leaf}``; empty dicts and non-dict values are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(recorded: dict[str, Any], expected: CacheKey) -> list[str]:
    """Human-readable differences between a recorded key and the expected one (empty: they match)."""
    want = _flatten(expected.to_dict())
    have = _flatten(recorded)
    out = []
    for name in sorted(set(want) | set(have)):
        if want.get(name, "<absent>") != have.get(name, "<absent>"):
            shown_have, shown_want = have.get(name, "<absent>"), want.get(name, "<absent>")
            if len(json.dumps(shown_have)) > 60 or len(json.dumps(shown_want)) > 60:
                out.append(f"{name} differs")
            else:
                out.append(f"{name}: built for {json.dumps(shown_have)}, needed {json.dumps(shown_want)}")
    return out


def metadata_path(artifact: Path) -> Path:
    """The metadata file beside an artifact: ``<artifact>.json``."""
    return artifact.with_name(artifact.name + ".json")


def _file_sizes(artifact: Path) -> dict[str, int]:
    if artifact.is_dir():
        return {p.relative_to(artifact).as_posix(): p.stat().st_size
                for p in sorted(artifact.rglob("*")) if p.is_file()}
    return {artifact.name: artifact.stat().st_size}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CacheEntry:
    """What the cache holds for one key.

    Attributes:
        path: where the artifact for the key lives (or would).
        state: ``"fresh"`` (usable), ``"missing"`` or ``"stale"`` (present but not usable).
        reasons: why it is stale.
    """

    path: Path
    state: str
    reasons: list[str] = field(default_factory=list)


class EngineCache:
    """A directory of keyed artifacts with their metadata (``onnx/`` graphs, ``plans/`` engines)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: CacheKey) -> Path:
        """Where the artifact for ``key`` lives."""
        return self.root / KIND_DIRS[key.kind] / key.filename()

    def status(self, key: CacheKey) -> CacheEntry:
        """Whether the artifact for ``key`` exists and its metadata and files match the key."""
        path = self.path(key)
        meta_file = metadata_path(path)
        if not path.exists() and not meta_file.exists():
            return CacheEntry(path, "missing")
        if not path.exists():
            return CacheEntry(path, "stale", ["metadata without its artifact"])
        if not meta_file.exists():
            return CacheEntry(path, "stale", ["no metadata beside it (an interrupted build or a foreign file)"])
        try:
            meta = json.loads(meta_file.read_text())
            recorded, files = meta["key"], meta["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            return CacheEntry(path, "stale", [f"unreadable metadata ({exc})"])
        reasons = differences(recorded, key)
        sizes = _file_sizes(path)
        if sizes != files:
            reasons.append(f"files differ from those recorded ({sorted(files)} -> {sorted(sizes)}, or sizes)")
        return CacheEntry(path, "stale" if reasons else "fresh", reasons)

    def metadata(self, key: CacheKey) -> dict[str, Any]:
        """The metadata recorded beside the artifact of ``key``."""
        return json.loads(metadata_path(self.path(key)).read_text())

    def others(self, key: CacheKey) -> list[tuple[Path, list[str]]]:
        """Artifacts of the same kind, network and precision built for another key, with the differences."""
        directory = self.root / KIND_DIRS[key.kind]
        found = []
        for meta_file in sorted(directory.glob(f"{key.network}-{key.precision}-*.json")):
            artifact = meta_file.with_name(meta_file.name[: -len(".json")])
            if artifact == self.path(key):
                continue
            try:
                recorded = json.loads(meta_file.read_text())["key"]
            except (json.JSONDecodeError, KeyError, TypeError, OSError):
                continue
            if recorded.get("network") == key.network:
                found.append((artifact, differences(recorded, key)))
        return found

    def explain_missing(self, key: CacheKey) -> str:
        """A sentence on what is in the cache for this network instead of a plan for ``key``."""
        others = self.others(key)
        if not others:
            return f"no {key.kind} for {key.network} ({key.precision}) in {self.root}"
        lines = [f"no {key.kind} for {key.network} ({key.precision}) matches; {len(others)} other(s) in "
                 f"{self.root} were built for something else:"]
        lines += [f"  {path.name}: {'; '.join(reasons[:4])}" for path, reasons in others]
        return "\n".join(lines)

    def refuse(self, entry: CacheEntry) -> StalePlanError:
        """The error for a stale artifact that may not be rebuilt."""
        return StalePlanError(f"{entry.path} is stale and will not be used: {'; '.join(entry.reasons)}. "
                              f"Delete it, or rebuild (make engines / on_stale='rebuild').")

    def get_or_build(self, key: CacheKey, build: Callable[[Path], dict[str, Any] | None],
                     on_stale: str = "rebuild", checksum: bool = False, supersede: bool = False) -> Path:
        """The path of a fresh artifact for ``key``, building it when missing (or stale and allowed).

        Args:
            key: what the artifact must have been built for.
            build: writes the artifact at the path it is given (a file or a directory, on the same
                file system); returns extra metadata to record (sizes, timings), or None.
            on_stale: ``"rebuild"`` replaces a stale artifact; ``"refuse"`` raises :class:`StalePlanError`.
            checksum: record the SHA-256 of a single-file artifact (plans), checked by :meth:`read_verified`.
            supersede: once built, delete the artifacts that differ from it in ``versions`` alone (the same
                graph for another tool version, CPU or export of it).
        """
        if on_stale not in ON_STALE:
            raise ValueError(f"on_stale must be one of {', '.join(ON_STALE)}, got {on_stale!r}")
        entry = self.status(key)
        if entry.state == "fresh":
            return entry.path
        if entry.state == "stale" and on_stale == "refuse":
            raise self.refuse(entry)
        self.remove(entry.path)
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.path.name}.", dir=entry.path.parent))
        try:
            target = work / entry.path.name
            start = time.perf_counter()
            extra = build(target) or {}
            if not target.exists():
                raise RuntimeError(f"building {key.network} wrote nothing at {target}")
            meta = {"key": key.to_dict(), "files": _file_sizes(target), "built_at": time.time(),
                    "build_seconds": round(time.perf_counter() - start, 3), **extra}
            if checksum and target.is_file():
                meta["sha256"] = _sha256_file(target)
            os.replace(target, entry.path)
            self._write_json(metadata_path(entry.path), meta)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if supersede:
            for other, reasons in self.others(key):
                if all(reason.startswith("versions.") for reason in reasons):
                    self.remove(other)
        return entry.path

    def read_verified(self, key: CacheKey, on_stale: str = "refuse") -> bytes:
        """The bytes of a fresh single-file artifact (a plan), checked against its recorded SHA-256.

        Raises:
            FileNotFoundError: no artifact for the key (with what else the cache holds).
            StalePlanError: the artifact is stale, or its bytes do not match the recorded checksum.
        """
        entry = self.status(key)
        if entry.state == "missing":
            raise FileNotFoundError(self.explain_missing(key))
        if entry.state == "stale":
            raise self.refuse(entry)
        data = entry.path.read_bytes()
        recorded = self.metadata(key).get("sha256")
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise self.refuse(CacheEntry(entry.path, "stale", ["its bytes do not match the recorded SHA-256"]))
        return data

    @staticmethod
    def remove(artifact: Path) -> None:
        """Delete an artifact and its metadata (metadata first, so a crash leaves no fresh-looking entry)."""
        metadata_path(artifact).unlink(missing_ok=True)
        if artifact.is_dir():
            shutil.rmtree(artifact)
        elif artifact.exists():
            artifact.unlink()

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
