"""``emote import``: read a system's files, map every key by its tables, write one of our model directories.

Steps: find and fingerprint the sources of the chosen variant, read their tensors (weights-only),
derive our config, build our model on the meta device, sort every source key by the key maps, check
that nothing is unknown, misshapen or missing (unless allowed), load, and save the directory with a
``provenance.json``. Nothing is written unless every check passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine import __version__
from engine.importers import echomimic, hallo
from engine.importers.keymap import KeyMapResult, apply_keymap, missing_keys
from engine.importers.provenance import PROVENANCE_FILE
from engine.importers.sources import SourceFile, find, fingerprint, model_folder_weights
from engine.importers.spec import SourceSpec, SystemSpec, read_source
from engine.models.checkpoint import CheckpointError, load_checked, save_model
from engine.models.model import EmoteModel

SYSTEMS: dict[str, SystemSpec] = {spec.name: spec for spec in (hallo.SYSTEM, echomimic.SYSTEM)}
FIRST_FEW = 3


@dataclass
class SourceReport:
    """What happened to one source: its file, how many keys it had, placed, dropped and left unknown."""

    role: str
    file: SourceFile | None
    keys: int = 0
    placed: int = 0
    dropped: int = 0
    unknown: int = 0
    note: str = ""


@dataclass
class ImportReport:
    """The account ``emote import`` prints: per source, per rule, what was dropped and why, and fallbacks;
    ``config_files`` are the architecture configs read (fingerprinted for the provenance)."""

    system: str
    variant: str
    src: Path
    out: Path
    sources: list[SourceReport] = field(default_factory=list)
    config_files: list[SourceFile] = field(default_factory=list)
    result: KeyMapResult = field(default_factory=KeyMapResult)
    unknown_dropped: list[str] = field(default_factory=list)
    missing_kept: dict[str, list[str]] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        out = [f"import {self.system} ({self.variant}) from {self.src}"]
        for s in self.sources:
            if s.file is None:
                out.append(f"  {s.role:<15} skipped: {s.note}")
                continue
            note = f"; {s.note}" if s.note else ""
            out.append(f"  {s.role:<15} {s.keys:>5} keys: {s.placed} mapped, {s.dropped} dropped, "
                       f"{s.unknown} unknown  ({s.file.path}{note})")
        out.append("mapped by rule")
        for rule, count in self.result.rule_counts.items():
            if rule.drops:
                continue
            target = f"{rule.component}:{rule.target}"
            out.append(f"  {count:>5}  {rule.pattern}  ->  {target}  ({rule.reason})")
        if self.result.reshaped:
            out.append(f"reshaped {len(self.result.reshaped)} tensors "
                       f"({', '.join(sorted(set(self.result.reshaped.values())))})")
        dropped = self.result.drop_reasons()
        if dropped or self.unknown_dropped:
            out.append("dropped")
            for reason, count in dropped.items():
                out.append(f"  {count:>5}  {reason}")
            if self.unknown_dropped:
                out.append(f"  {len(self.unknown_dropped):>5}  unknown keys, dropped by --allow-unknown "
                           f"(first: {', '.join(self.unknown_dropped[:FIRST_FEW])})")
        for component, keys in self.missing_kept.items():
            if keys:
                out.append(f"missing in {component}: {len(keys)} keys keep their initial values "
                           f"(--allow-missing; first: {', '.join(keys[:FIRST_FEW])})")
        total = sum(self.parameters.values())
        out.append(f"wrote {self.out} ({', '.join(f'{k} {v / 1e6:.2f} M' for k, v in self.parameters.items())}; "
                   f"{total / 1e6:.2f} M parameters)")
        for note in self.fallbacks:
            out.append(f"fallback: {note}")
        return out


def expected_shapes(model: EmoteModel) -> dict[str, dict[str, tuple[int, ...]]]:
    """Per component of ``model`` (built on any device, meta included): our key -> shape."""
    return {name: {k: tuple(v.shape) for k, v in module.state_dict().items()}
            for name, module in model.components().items()}


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:FIRST_FEW]) + (" ..." if len(keys) > FIRST_FEW else "")


def _read(src: Path, spec: SourceSpec) -> tuple[Path | None, dict[str, torch.Tensor]]:
    path = find(src, spec.candidates)
    if path is None:
        if spec.required:
            raise CheckpointError(f"{src}: no {spec.role} (looked for {' or '.join(spec.candidates)})")
        return None, {}
    return path, read_source(path, spec.reader)


def _fingerprint(role: str, path: Path) -> SourceFile:
    return fingerprint(role, model_folder_weights(path) if path.is_dir() else path)


def import_model(system: str, src: Path, out: Path, variant: str = "standard", allow_unknown: bool = False,
                 allow_missing: bool = False, dtype: torch.dtype = torch.float32) -> ImportReport:
    """Import ``system``'s checkpoint files under ``src`` into the model directory ``out``.

    Args:
        system: a key of :data:`SYSTEMS` (``"hallo"``, ``"echomimic"``).
        src: the folder holding the system's files (or its ``pretrained_models`` / ``pretrained_weights``).
        out: the model directory to write (replaced atomically).
        variant: a key of the system's ``variants`` (EchoMimic: ``"standard"`` or ``"acc"``).
        allow_unknown: drop source keys no rule places (listed) instead of failing.
        allow_missing: keep our initial values for keys no source fills (listed) instead of failing.
        dtype: floating-point dtype of the written weights.
    Returns:
        the report (also the content of ``provenance.json``'s key counts).
    Raises:
        CheckpointError: a file is missing or unreadable, or keys are unknown / missing / misshapen;
            the message names the first few.
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    spec = SYSTEMS[system]
    if variant not in spec.variants:
        raise ValueError(f"{system} has no variant {variant!r}; known: {', '.join(spec.variants)}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such folder")
    report = ImportReport(system, variant, src, out, fallbacks=spec.fallbacks)
    report.config_files = [fingerprint(role, path) for role, candidates in spec.config_files
                           if (path := find(src, candidates)) is not None]
    main = [s for s in spec.variants[variant] if not s.fills_only]
    fillers = [s for s in spec.variants[variant] if s.fills_only]
    states: dict[str, dict[str, torch.Tensor]] = {}
    paths: dict[str, Path] = {}
    for source in main:
        path, state = _read(src, source)
        if path is not None:
            states[source.role], paths[source.role] = state, path
    cfg = spec.build_config(src, states, variant)
    model = EmoteModel(cfg) if allow_missing else EmoteModel.on_meta(cfg)
    components = model.components()
    expected = expected_shapes(model)
    for source in main:
        if source.role not in states:
            report.sources.append(SourceReport(source.role, None, note="optional, not present"))
            continue
        result = apply_keymap(source.keymap, states[source.role], expected)
        report.result.merge(result)
        report.sources.append(SourceReport(source.role, _fingerprint(source.role, paths[source.role]),
                                           keys=len(states[source.role]), placed=len(result.mapped),
                                           dropped=len(result.dropped), unknown=len(result.unknown)))
    missing = missing_keys(report.result, expected)
    for source in fillers:
        _fill(src, source, report, expected, missing)
        missing = missing_keys(report.result, expected)
    _check(report, missing, allow_unknown, allow_missing)
    states.clear()
    for name, module in components.items():
        placed, tensors = report.result.tensors.pop(name, {}), {}
        for key in list(placed):
            value = placed.pop(key)
            tensors[key] = value.to(dtype) if value.is_floating_point() else value
        load_checked(module, tensors, f"{system}:{name}", allow_missing=lambda key: allow_missing)
        del tensors
    model.to(dtype)
    model.sync_default_context()
    report.parameters = model.parameter_counts()
    save_model(model, out, extra_files={PROVENANCE_FILE: json.dumps(provenance(report), indent=2) + "\n"})
    return report


def _fill(src: Path, source: SourceSpec, report: ImportReport, expected: dict[str, dict[str, tuple[int, ...]]],
          missing: dict[str, list[str]]) -> None:
    """Fill keys the other sources left missing from a ``fills_only`` source (same shapes only)."""
    if not any(missing.values()):
        report.sources.append(SourceReport(source.role, None, note="not needed (the other files cover every key)"))
        return
    path, state = _read(src, source)
    if path is None:
        report.sources.append(SourceReport(source.role, None, note="optional, not present"))
        return
    wanted = {component: set(keys) for component, keys in missing.items()}
    result = apply_keymap(source.keymap, state, expected)
    used = 0
    for key, (component, ours) in result.mapped.items():
        if ours in wanted.get(component, set()):
            report.result.tensors.setdefault(component, {})[ours] = result.tensors[component][ours]
            report.result.mapped[key] = (component, ours)
            used += 1
    report.sources.append(SourceReport(source.role, _fingerprint(source.role, path), keys=len(state), placed=used,
                                       note=f"initial values only: {used} keys the other files lack"))


def _check(report: ImportReport, missing: dict[str, list[str]], allow_unknown: bool, allow_missing: bool) -> None:
    """Raise on misshapen keys always, on unknown / missing ones unless allowed (recording what was allowed)."""
    result = report.result
    problems = []
    if result.mismatched:
        key, (theirs, ours) = next(iter(result.mismatched.items()))
        problems.append(f"{len(result.mismatched)} keys with another shape (first: {key} {list(theirs)} vs ours "
                        f"{list(ours)})")
    if result.unknown and not allow_unknown:
        problems.append(f"{len(result.unknown)} unknown keys (first: {_first(result.unknown)}; "
                        f"--allow-unknown drops them)")
    flat_missing = [f"{c}:{k}" for c, keys in missing.items() for k in keys]
    if flat_missing and not allow_missing:
        problems.append(f"{len(flat_missing)} missing keys (first: {_first(flat_missing)}; "
                        f"--allow-missing keeps initial values)")
    if problems:
        raise CheckpointError(f"import {report.system}: " + "; ".join(problems))
    report.unknown_dropped = list(result.unknown)
    report.missing_kept = {c: keys for c, keys in missing.items() if keys}


def provenance(report: ImportReport) -> dict:
    """The ``provenance.json`` content of an import."""
    return {
        "system": report.system,
        "variant": report.variant,
        "description": SYSTEMS[report.system].description,
        "source": str(report.src.resolve()),
        "imported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "imported_with": f"emote {__version__}",
        "files": [s.file.to_dict(report.src) for s in report.sources if s.file is not None]
        + [f.to_dict(report.src) for f in report.config_files],
        "keys": {
            "mapped": len(report.result.mapped),
            "dropped": dict(report.result.drop_reasons()),
            "unknown_dropped": report.unknown_dropped,
            "missing_kept_initial": report.missing_kept,
        },
        "fallbacks": list(report.fallbacks),
    }
