"""Property-based fuzzing (hypothesis) of the session protocol's message parser: whatever text a client sends
as a message, the server gets a parsed message with sound fields or a :class:`ProtocolError` of the client's
kind (a 44xx close code, a one-line message, a close reason that fits a close frame), never anything else.
A bounded number of examples, so it runs with the rest of the tests.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.serve.protocol import (
    FRAME_FORMATS,
    MAX_CLOSE_REASON_BYTES,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    ProtocolError,
    StartRequest,
    close_reason,
    parse_start,
    parse_text,
)

MAX_UPLOAD = 10 * 1024 * 1024
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_text = (st.text(st.characters(exclude_categories=()))
            | st.lists(st.characters(exclude_categories=()) | st.characters(categories=["Cs"])).map("".join))
"""Any code points, the second branch with many lone surrogates (JSON's ``\\ud800`` escapes decode to them)."""
wide_text = st.text(st.characters(min_codepoint=0x80, exclude_categories=()), min_size=30, max_size=300)
"""Long text of multi-byte characters (an error message quoting it is longer in bytes than in characters)."""
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**400, max_value=10**400)
           | st.floats() | any_text | wide_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
start_fields = {
    "token": any_text | json_values,
    "portrait": st.sampled_from(["sample", "upload"]) | json_values,
    "portrait_bytes": st.integers(-1, 2 * MAX_UPLOAD) | st.integers() | json_values,
    "sample_rate": st.integers(0, 2 * MAX_SAMPLE_RATE) | json_values,
    "frames": st.sampled_from(sorted(FRAME_FORMATS)) | json_values,
    "jpeg_quality": st.integers(0, 120) | json_values,
}
starts = st.fixed_dictionaries({"type": st.just("start")}, optional=start_fields)
plausible_starts = st.fixed_dictionaries({
    "type": st.just("start"), "token": any_text, "portrait": st.sampled_from(["sample", "upload"]),
    "portrait_bytes": st.integers(1, MAX_UPLOAD), "sample_rate": st.integers(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
    "frames": st.sampled_from(sorted(FRAME_FORMATS)), "jpeg_quality": st.integers(10, 100)})
"""Starts whose numbers and names are all in range, so that what the other fields carry reaches the end."""
messages = (st.dictionaries(st.text(max_size=8), json_values, max_size=6)
            | st.fixed_dictionaries({"type": st.sampled_from(["start", "end", "reset"]) | any_text | wide_text},
                                    optional={"pad": json_values})
            | starts)


def as_text(value: object, ascii_only: bool) -> str:
    """``value`` as the JSON text a client would send (NaN and Infinity included, as Python writes them)."""
    return json.dumps(value, ensure_ascii=ascii_only)


texts = (any_text
         | st.builds(as_text, json_values, st.booleans())
         | st.builds(as_text, messages, st.booleans())
         | st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)
         | st.integers(1, 1500).map(lambda depth: '{"type":' * depth + '"x"' + "}" * depth))


def check_error(error: ProtocolError) -> None:
    """What a client's mistake must give: a 44xx close code, a one-line message, a reason a close frame holds."""
    assert 4400 <= error.close_code < 4500, (error.code, error.message)
    assert error.message and "\n" not in error.message
    assert len(close_reason(error)) <= MAX_CLOSE_REASON_BYTES


def check_start(start: StartRequest) -> None:
    """A parsed start has fields the session can use as they are."""
    start.token.encode("utf-8")
    assert start.portrait in ("sample", "upload") and start.frames in FRAME_FORMATS
    assert (0 < start.portrait_bytes <= MAX_UPLOAD) if start.portrait == "upload" else start.portrait_bytes == 0
    assert MIN_SAMPLE_RATE <= start.sample_rate <= MAX_SAMPLE_RATE and 10 <= start.jpeg_quality <= 100


def first_message(text: str) -> None:
    """The server's reading of a connection's first message: parse it, then check it as a ``start``."""
    try:
        check_start(parse_start(parse_text(text), MAX_UPLOAD))
    except ProtocolError as error:
        check_error(error)


@FUZZ
@given(texts)
def test_any_first_message_is_a_start_or_a_protocol_error(text):
    first_message(text)


@FUZZ
@given(starts | plausible_starts, st.booleans())
def test_any_start_message_is_a_start_or_a_protocol_error(message, ascii_only):
    first_message(as_text(message, ascii_only))


@FUZZ
@given(texts)
def test_any_later_message_is_an_object_with_a_type_or_a_protocol_error(text):
    try:
        message = parse_text(text)
    except ProtocolError as error:
        check_error(error)
        return
    assert isinstance(message, dict) and isinstance(message["type"], str)


@FUZZ
@given(st.sampled_from(["bad_request", "too_large", "bad_image"]), any_text | wide_text)
def test_any_error_message_fits_a_close_frame(code, message):
    check_error(ProtocolError(code, " ".join(message.split()) or "x"))
