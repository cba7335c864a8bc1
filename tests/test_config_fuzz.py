"""Property-based fuzzing (hypothesis) of ``config.json`` loading: whatever a model directory's config.json
holds (any JSON, a preset's config with any field replaced, removed or added, text that is not JSON), loading
gives a model config that saves and loads back equal, or one :class:`ConfigError` line naming the file, never
another exception. Numbers outside a field's range are refused naming that field, and every number inside it
is accepted. A bounded number of examples, so it runs with the rest of the tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import ConfigError, ModelConfig, preset

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRESET = preset("tiny").to_dict()

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**30, max_value=10**30)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["wav2vec2", "whisper", "zeros", "reference", "conv_in", "latent", "hidden", "norm1",
                              "ddim", "lcm", "euler", "tiny", "sd15"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def paths(config: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path into ``config``'s nested objects and arrays."""
    found = []
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        found.append(prefix + (key,))
        found += paths(value, prefix + (key,))
    return found


def value_at(config: dict, path: tuple) -> object:
    """The value at key path ``path`` in ``config``."""
    for key in path:
        config = config[key]
    return config


def edited(config: dict, path: tuple, action: str, value: object) -> dict:
    """A deep copy of ``config`` with the field at ``path`` replaced by ``value`` or removed, or (``"add"``) the
    object at ``path`` given an unknown field holding ``value``."""
    out = json.loads(json.dumps(config))
    if action == "add":
        value_at(out, path)["unknown_field"] = value
        return out
    parent = value_at(out, path[:-1])
    if action == "replace":
        parent[path[-1]] = value
    else:
        del parent[path[-1]]
    return out


@st.composite
def preset_edits(draw) -> dict:
    """The tiny preset's full config, or a ``{"preset": "tiny", ...}`` override, with one to three fields edited:
    replaced by any JSON value, removed, or an unknown field added to one of its objects."""
    config = PRESET if draw(st.booleans()) else {"preset": "tiny", **{k: PRESET[k] for k in ("unet", "audio")}}
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "add":
            choices = [()] + [p for p in paths(config) if isinstance(value_at(config, p), dict)]
        else:
            choices = paths(config)
        if not choices:
            break
        config = edited(config, draw(st.sampled_from(choices)), action, draw(json_values))
    return config


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """The config.json every example is written to (one file, rewritten: a function-scoped tmp_path would be
    shared by all of a test's examples anyway)."""
    return tmp_path_factory.mktemp("model") / "config.json"


def loads_or_refuses(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` and load it: a config that round-trips, or one ConfigError line naming ``path``."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = ModelConfig.load(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return
    assert isinstance(config, ModelConfig)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@FUZZ
@given(json_values)
def test_any_json_loads_or_is_one_config_error(config_file, value):
    loads_or_refuses(config_file, json.dumps(value))


@FUZZ
@given(preset_edits())
def test_a_preset_with_any_field_edited_loads_or_is_one_config_error(config_file, config):
    loads_or_refuses(config_file, json.dumps(config))


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64)
       | st.builds(lambda head, tail: head + tail, st.sampled_from(['{"resolution": ', '{"unet": [', "[" * 3000,
                                                                     '{"fps": 1e999}', '{"fps": NaN}']),
                   st.text(max_size=8)))
def test_any_file_loads_or_is_one_config_error(config_file, text):
    loads_or_refuses(config_file, text)


RANGES = {
    # field path in the tiny preset: (kind, lowest, highest, multiple of) accepted there, highest None where
    # the field has no upper bound (then values up to 8 are tried inside); the clip frames and the motion frames
    # share the tiny preset's 24-row temporal position table (8 clip frames, 4 motion frames)
    ("fps",): (float, 1.0, 120.0, None),
    ("resolution",): (int, 32, 2048, 32),
    ("clip_frames",): (int, 1, 20, None),
    ("motion_frames",): (int, 0, 16, None),
    ("sampling", "steps"): (int, 1, 50, None),
    ("sampling", "cfg_audio"): (float, 0.0, 30.0, None),
    ("sampling", "cfg_ref"): (float, 0.0, 30.0, None),
    ("sampling", "motion_anchor"): (float, 0.0, 1.0, None),
    ("unet", "layers_per_block"): (int, 1, None, None),
    ("unet", "norm_eps"): (float, 0.0, None, None),
    ("speed", "window"): (int, 0, None, None),
    ("reference_net", "context_tokens"): (int, 1, None, None),
    ("vae", "scaling_factor"): (float, 0.0, None, None),
}
ABOVE_LOWEST = {("unet", "norm_eps"), ("vae", "scaling_factor")}
"""The fields of :data:`RANGES` that must be greater than their lowest value, not equal to it."""


@st.composite
def in_range_edits(draw) -> tuple[tuple, object]:
    """A field of :data:`RANGES` and a value its range accepts."""
    path = draw(st.sampled_from(sorted(RANGES)))
    kind, low, high, multiple = RANGES[path]
    high = 8 if high is None else high
    if kind is float:
        return path, draw(st.floats(low, high, exclude_min=path in ABOVE_LOWEST))
    if multiple:
        return path, multiple * draw(st.integers(-(-low // multiple), high // multiple))
    return path, draw(st.integers(low, high))


@st.composite
def out_of_range_edits(draw) -> tuple[tuple, object]:
    """A field of :data:`RANGES` and a value outside its range (or, for a side, not a multiple of what it needs)."""
    path = draw(st.sampled_from(sorted(RANGES)))
    kind, low, high, multiple = RANGES[path]
    if kind is float:
        lowest_out = low if path in ABOVE_LOWEST else math.nextafter(low, -math.inf)  # below 0.0 is -5e-324, not -0.0
        outside = st.floats(max_value=lowest_out, allow_nan=False, allow_infinity=False)
        if high is not None:
            outside |= st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False)
        return path, draw(outside)
    outside = st.integers(max_value=low - 1)
    if high is not None:
        outside |= st.integers(min_value=high + 1)
    if multiple:
        outside |= st.integers(low, high).filter(lambda n: n % multiple)
    return path, draw(outside)


@FUZZ
@given(in_range_edits())
def test_every_number_inside_a_fields_range_is_accepted(config_file, edit):
    path, value = edit
    config_file.write_text(json.dumps(edited(PRESET, path, "replace", value)))
    assert value_at(ModelConfig.load(config_file).to_dict(), path) == value


@FUZZ
@given(out_of_range_edits())
def test_a_number_outside_a_fields_range_is_one_error_naming_the_field(config_file, edit):
    path, value = edit
    config_file.write_text(json.dumps(edited(PRESET, path, "replace", value)))
    with pytest.raises(ConfigError) as refused:
        ModelConfig.load(config_file)
    message = str(refused.value)
    fields = message.removeprefix(f"{config_file}: ").split(": ")[0].split(" + ")
    assert message.startswith(f"{config_file}: ") and ".".join(path) in fields and "\n" not in message, message
