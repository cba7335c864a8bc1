"""A CPU backend runs every network call of a stream on one thread of its own, at the intra-op thread count asked."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from support import speech

from engine.backends import make_backend
from engine.backends.compute_thread import ComputeThread, ComputeThreadBackend
from engine.backends.torch_eager import TorchEagerBackend
from engine.stream.runner import LiveSession
from engine.stream.session import GenerationOptions, Session

NETWORKS = ("audio_tokens", "reference", "backbone", "image_tokens", "face_features", "speed_tokens",
            "vae_encode", "vae_decode")


def spy_on(backend: ComputeThreadBackend) -> list[tuple[str, int, int]]:
    """Record (network, thread, intra-op threads) of every call that reaches ``backend``'s inner backend."""
    calls: list[tuple[str, int, int]] = []
    for name in NETWORKS:
        def spy(*args, _name=name, _call=getattr(backend.inner, name), **kwargs):
            calls.append((_name, threading.get_ident(), torch.get_num_threads()))
            return _call(*args, **kwargs)
        setattr(backend.inner, name, spy)
    return calls


def test_every_network_call_of_a_live_stream_runs_on_the_backends_thread(model, portrait):
    backend = make_backend("torch", model, "cpu", threads=3)
    assert isinstance(backend, ComputeThreadBackend)
    calls = spy_on(backend)
    session = Session(backend, model.config, *portrait, GenerationOptions(steps=2))
    for name in ("step", "decode"):  # the torch work around the network calls goes there too
        def spy(*args, _name=name, _call=getattr(session, name), **kwargs):
            calls.append((_name, threading.get_ident(), torch.get_num_threads()))
            return _call(*args, **kwargs)
        setattr(session, name, spy)
    live = LiveSession(session)
    try:
        live.push_audio(np.zeros(16000 // 2, np.float32))
        live.end()
        frames = list(live)
    finally:
        live.close()
    assert len(frames) == 13
    names = {name for name, _, _ in calls}
    assert {"reference", "audio_tokens", "backbone", "vae_decode", "step", "decode"} <= names
    assert {thread for _, thread, _ in calls} == {backend.compute.run(threading.get_ident)}
    assert {count for _, _, count in calls} == {3}


def test_the_backends_other_attributes_are_the_inner_backends(model):
    backend = make_backend("torch", model, "cpu", threads=1)
    assert backend.model is backend.inner.model
    assert (backend.name, backend.device, backend.dtype) == ("torch", torch.device("cpu"), torch.float32)
    with pytest.raises(AttributeError):
        backend.no_such_attribute


def test_a_compute_thread_runs_calls_in_order_reentrantly_and_raises_their_errors():
    count = torch.get_num_threads()
    compute = ComputeThread(count + 1)
    try:
        caller = threading.get_ident()
        worker = compute.run(threading.get_ident)
        assert worker != caller
        assert compute.run(lambda: compute.run(threading.get_ident)) == worker  # a call made from a call: inline
        assert compute.run(lambda: torch.ones(1 << 20).add(1).sum() and torch.get_num_threads()) == count + 1
        started: list[int] = []
        later = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert started == [count] and torch.get_num_threads() == count, "other threads keep the caller's count"
        done: list[int] = []
        workers = [threading.Thread(target=compute.run, args=(done.append, i)) for i in range(8)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        assert sorted(done) == list(range(8))
        with pytest.raises(ZeroDivisionError):
            compute.run(lambda: 1 / 0)
        assert compute.run(lambda: 7) == 7
    finally:
        compute.close()
    with pytest.raises(ValueError, match="at least 1"):
        ComputeThread(0)


def test_a_clips_frames_are_decoded_before_the_work_only_the_next_clip_needs(model, portrait):
    """On the one compute thread nothing overlaps: a clip is decoded right after its last step, before the
    ReferenceNet pass on its motion frames (which only the next clip reads), and before the next clip's steps.
    The frames are those of an offline session on the calling thread."""
    options = GenerationOptions(steps=2, first_clip_frames=4)
    pcm = speech(1.0, hz=170)
    backend = make_backend("torch", model, "cpu", threads=torch.get_num_threads())
    assert backend.serial
    calls = spy_on(backend)
    live = LiveSession(Session(backend, model.config, *portrait, options))
    try:
        live.push_audio(pcm)
        live.end()
        frames = list(live)
    finally:
        live.close()
    offline = Session(TorchEagerBackend(model), model.config, *portrait, options)
    offline.push_audio(pcm)
    offline.end()
    want = list(offline.frames())
    assert [f.index for f in frames] == [f.index for f in want]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, want))
    names = [name for name, _, _ in calls]
    decodes = [i for i, name in enumerate(names) if name == "vae_decode"]
    assert len(decodes) >= 3
    assert all(names[i - 1] == "backbone" for i in decodes), names
    assert live.session.anchored == offline.anchored
