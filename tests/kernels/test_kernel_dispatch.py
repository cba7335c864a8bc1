"""EMOTE_KERNELS: which backend runs, the forced-triton error, the log line, and the wrappers' routing."""

import logging
import os
import threading
from types import SimpleNamespace

import pytest
import torch

from emote_kernels import dispatch
from emote_kernels import group_norm as gn
from emote_kernels import reference_attention as ra
from emote_kernels import temporal_attention as ta


@pytest.fixture(autouse=True)
def fresh_choice():
    dispatch.reset_backend()
    yield
    dispatch.reset_backend()


def set_machine(monkeypatch, mode: str | None, cuda: bool, interpret: bool, triton_error: str | None = None) -> None:
    if mode is None:
        monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(dispatch.ENV_VAR, mode)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: triton_error)


@pytest.mark.parametrize(
    "mode, cuda, interpret, triton_error, expected",
    [
        (None, False, False, None, "torch"),
        ("auto", False, True, None, "torch"),
        ("auto", True, False, None, "triton"),
        (" AUTO ", True, False, "No module named 'triton'", "torch"),
        ("torch", True, False, None, "torch"),
        ("triton", True, False, None, "triton"),
        ("triton", False, True, None, "triton"),
    ],
)
def test_mode_resolves_to_backend(monkeypatch, mode, cuda, interpret, triton_error, expected):
    set_machine(monkeypatch, mode, cuda, interpret, triton_error)
    assert dispatch.active_backend() == expected


def test_forced_triton_without_cuda_or_interpreter_is_a_clear_error(monkeypatch):
    set_machine(monkeypatch, "triton", cuda=False, interpret=False)
    with pytest.raises(RuntimeError, match="needs a CUDA device.*TRITON_INTERPRET=1"):
        dispatch.active_backend()


def test_forced_triton_without_the_package_is_a_clear_error(monkeypatch):
    set_machine(monkeypatch, "triton", cuda=True, interpret=False, triton_error="No module named 'triton'")
    with pytest.raises(RuntimeError, match="triton does not import"):
        dispatch.active_backend()


def test_unknown_mode_is_rejected(monkeypatch):
    set_machine(monkeypatch, "cuda", cuda=True, interpret=False)
    with pytest.raises(ValueError, match="EMOTE_KERNELS='cuda' is not one of auto, triton, torch"):
        dispatch.active_backend()


def test_choice_is_logged_once_and_cached(monkeypatch, caplog):
    set_machine(monkeypatch, "torch", cuda=False, interpret=False)
    with caplog.at_level(logging.INFO, logger="emote.kernels"):
        assert dispatch.active_backend() == "torch"
        monkeypatch.setenv(dispatch.ENV_VAR, "triton")
        assert dispatch.active_backend() == "torch"
    records = [r for r in caplog.records if r.name == "emote.kernels"]
    assert len(records) == 1 and "torch" in records[0].getMessage()


@pytest.mark.parametrize(
    "mode, interpret, on_cuda, expected",
    [("torch", True, False, False), ("triton", True, False, True), ("triton", False, True, True),
     ("auto", False, False, False)],
)
def test_use_triton_depends_on_backend_and_tensor_device(monkeypatch, mode, interpret, on_cuda, expected):
    set_machine(monkeypatch, mode, cuda=True, interpret=interpret)
    cuda_tensor = SimpleNamespace(is_cuda=True, device=torch.device("cuda"), requires_grad=False)
    tensor = cuda_tensor if on_cuda else torch.empty(0)
    assert dispatch.use_triton(tensor) is expected


@pytest.mark.parametrize("mode, expected", [("torch", "reference"), ("triton", "triton")])
def test_wrappers_route_by_backend(monkeypatch, mode, expected):
    set_machine(monkeypatch, mode, cuda=False, interpret=True)
    calls = []
    for module, name in ((ta, "temporal_attention"), (gn, "group_norm"), (ra, "reference_attention")):
        for impl in ("reference", "triton"):
            monkeypatch.setattr(module, f"{name}_{impl}", lambda *args, _n=f"{name}_{impl}", **kw: calls.append(_n))
    x = torch.zeros(4, 6, 32)
    ta.temporal_attention(x, x, x, 2, 2)
    gn.group_norm(x, 8)
    ra.reference_attention(x, x, x, x[:2], x[:2], None, 2)
    assert calls == [f"temporal_attention_{expected}", f"group_norm_{expected}", f"reference_attention_{expected}"]


def test_ops_that_autograd_needs_run_the_reference(monkeypatch):
    """The kernels have no backward: with grad on and a trainable input (or weight) the reference runs, so
    training on CUDA gets gradients; under no_grad the same call runs the kernel."""
    set_machine(monkeypatch, "triton", cuda=False, interpret=True)
    x, weight = torch.zeros(4, 6, 32), torch.ones(6, requires_grad=True)
    assert dispatch.use_triton(x) and dispatch.use_triton(x, None)
    assert not dispatch.use_triton(x, weight)
    assert not dispatch.use_triton(x.requires_grad_())
    with torch.no_grad():
        assert dispatch.use_triton(x, weight)
    calls = []
    for impl in ("reference", "triton"):
        monkeypatch.setattr(gn, f"group_norm_{impl}", lambda *args, _n=impl, **kw: calls.append(_n))
    gn.group_norm(x, 2, weight)
    with torch.inference_mode():
        gn.group_norm(torch.zeros(4, 6, 32), 2, weight)
    assert calls == ["reference", "triton"]


def test_triton_jit_follows_the_mode_triton_was_imported_in(monkeypatch):
    """Same mode as at triton's import: one cached kernel object; the other mode: a clear error."""
    pytest.importorskip("triton")
    from triton.language import standard

    imported_interpreted = type(standard.max).__name__ == "InterpretedFunction"

    def kernel(x_ptr):
        pass

    monkeypatch.setenv("TRITON_INTERPRET", "1" if imported_interpreted else "0")
    made = dispatch.triton_jit(kernel)
    assert dispatch.triton_jit(kernel) is made
    assert type(made).__name__ == ("InterpretedFunction" if imported_interpreted else "JITFunction")
    monkeypatch.setenv("TRITON_INTERPRET", "0" if imported_interpreted else "1")
    with pytest.raises(RuntimeError, match="when triton was first imported"):
        dispatch.triton_jit(kernel)


@pytest.mark.parametrize("previous", [None, "triton"])
def test_forced_mode_is_chosen_inside_and_restored_after(monkeypatch, previous):
    set_machine(monkeypatch, previous, cuda=False, interpret=True)
    process = "triton" if previous == "triton" else "torch"
    with dispatch.forced("torch") as inside:
        assert inside == "torch" == dispatch.active_backend()
        assert os.environ.get(dispatch.ENV_VAR) == previous, "the environment is not rewritten"
    assert dispatch.active_backend() == process
    with dispatch.forced(None) as left_alone:
        assert os.environ.get(dispatch.ENV_VAR) == previous
        assert left_alone == dispatch.active_backend() == process


def test_a_forced_mode_holds_in_its_own_thread_only(monkeypatch):
    """A server's sessions share the process: one session's export (forced to the PyTorch references)
    must not change the kernels another session's thread runs."""
    set_machine(monkeypatch, "triton", cuda=False, interpret=True)
    inside, outside = threading.Event(), threading.Event()
    seen = {}

    def other_session() -> None:
        inside.wait(10)
        seen["other"] = dispatch.active_backend()
        outside.set()

    thread = threading.Thread(target=other_session)
    thread.start()
    with dispatch.forced("torch"):
        inside.set()
        outside.wait(10)
        seen["exporting"] = dispatch.active_backend()
    thread.join(10)
    assert seen == {"other": "triton", "exporting": "torch"}
