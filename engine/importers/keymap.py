"""Key maps as data: ordered tables of rules that say where each tensor of a foreign checkpoint goes.

A rule matches a source key with a regular expression (the whole key) and either sends it to one of
our components under a new name (a ``re`` replacement template), optionally through a named reshape,
or drops it with a reason. The first matching rule wins. A key no rule matches, or one sent to a
name our network does not have, is *unknown*; a key of our network that nothing filled is *missing*.
:func:`apply_keymap` only sorts and renames; :class:`KeyMapResult` says what happened to every key.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch


def _conv1x1_to_linear(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``[out, in, 1, 1]`` (a 1x1 convolution) -> ``[out, in]`` (the same map as a linear layer)."""
    if tensor.dim() != 4 or tuple(tensor.shape[2:]) != (1, 1):
        raise ValueError(f"expected a [out, in, 1, 1] convolution weight, got {list(tensor.shape)}")
    return tensor.reshape(shape)


RESHAPES: dict[str, Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]] = {
    "conv1x1_to_linear": _conv1x1_to_linear,
}
"""Named reshapes a rule may ask for: ``f(source_tensor, our_shape) -> tensor of our_shape``."""


@dataclass(frozen=True)
class Rule:
    """One row of a key map.

    Attributes:
        pattern: regular expression matched against the whole source key.
        component: our component the tensor goes to (``"backbone"``, ``"vae"``, ...); None drops it.
        target: ``re`` replacement template giving our key (``r"\\1"`` keeps the matched rest).
        reason: for drops, why (printed by ``emote import``); for renames, what the rename means.
        reshape: name in :data:`RESHAPES`, applied only when the source shape differs from ours.
    """

    pattern: str
    component: str | None
    target: str = r"\1"
    reason: str = ""
    reshape: str | None = None

    def __post_init__(self) -> None:
        re.compile(self.pattern)
        if self.reshape is not None and self.reshape not in RESHAPES:
            raise ValueError(f"unknown reshape {self.reshape!r}; known: {', '.join(RESHAPES)}")

    @property
    def drops(self) -> bool:
        return self.component is None


KeyMap = tuple[Rule, ...]


@dataclass
class KeyMapResult:
    """What a key map did to one source state dict.

    Attributes:
        tensors: per component, our key -> tensor (renamed and reshaped); an import empties it as it loads
            them, so that only one copy of the weights is held at a time.
        mapped: source key -> (component, our key) for every tensor placed.
        rule_counts: how many tensors each rule placed or dropped (rules that did nothing are absent).
        reshaped: source keys that went through a reshape, with its name.
        dropped: source key -> reason, for keys a rule drops on purpose.
        unknown: source keys no rule places in our network (no rule, or a target we do not have).
        mismatched: source key -> (source shape, our shape) for shapes that do not fit.
    """

    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    mapped: dict[str, tuple[str, str]] = field(default_factory=dict)
    rule_counts: Counter[Rule] = field(default_factory=Counter)
    reshaped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def merge(self, other: KeyMapResult) -> None:
        """Add ``other``'s keys (a later source file) to this result; a later tensor replaces an earlier one."""
        for component, tensors in other.tensors.items():
            self.tensors.setdefault(component, {}).update(tensors)
        self.mapped.update(other.mapped)
        self.rule_counts.update(other.rule_counts)
        self.reshaped.update(other.reshaped)
        self.dropped.update(other.dropped)
        self.unknown.extend(other.unknown)
        self.mismatched.update(other.mismatched)

    def drop_reasons(self) -> Counter[str]:
        """How many keys were dropped for each reason."""
        return Counter(self.dropped.values())


def match(keymap: KeyMap, key: str) -> tuple[Rule, re.Match[str]] | None:
    """The first rule of ``keymap`` whose pattern matches all of ``key``, with its match; None if none does."""
    for rule in keymap:
        found = re.fullmatch(rule.pattern, key)
        if found is not None:
            return rule, found
    return None


def apply_keymap(keymap: KeyMap, state: dict[str, torch.Tensor],
                 expected: dict[str, dict[str, tuple[int, ...]]]) -> KeyMapResult:
    """Sort every tensor of ``state`` by ``keymap`` into our components.

    Args:
        keymap: the rules, first match wins.
        state: source key -> tensor (one checkpoint file, prefixes as shipped).
        expected: per component, our key -> shape (from our network built on the meta device).
    Returns:
        the placed tensors and an account of every source key.
    """
    result = KeyMapResult()
    for key, tensor in state.items():
        found = match(keymap, key)
        if found is None:
            result.unknown.append(key)
            continue
        rule, matched = found
        if rule.drops:
            result.dropped[key] = rule.reason
            result.rule_counts[rule] += 1
            continue
        ours = matched.expand(rule.target)
        shapes = expected.get(rule.component, {})
        if ours not in shapes:
            result.unknown.append(key)
            continue
        shape = tuple(shapes[ours])
        if tuple(tensor.shape) != shape and rule.reshape is not None and tensor.numel() == math.prod(shape):
            tensor = RESHAPES[rule.reshape](tensor, shape)
            result.reshaped[key] = rule.reshape
        if tuple(tensor.shape) != shape:
            result.mismatched[key] = (tuple(tensor.shape), shape)
            continue
        result.tensors.setdefault(rule.component, {})[ours] = tensor
        result.mapped[key] = (rule.component, ours)
        result.rule_counts[rule] += 1
    return result


def missing_keys(result: KeyMapResult, expected: dict[str, dict[str, tuple[int, ...]]]) -> dict[str, list[str]]:
    """Per component, our keys that no source tensor filled (in our state-dict order)."""
    return {component: [k for k in shapes if k not in result.tensors.get(component, {})]
            for component, shapes in expected.items()}
