"""Session batching (engine/stream/batching.py): each session's latents and frames are bitwise those of it run
alone, a stalled session holds no one back, and the backbone calls really are shared."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from support import SR, speech

from engine.backends.torch_eager import TorchEagerBackend
from engine.options import GenerationOptions
from engine.stream.batching import BatchScheduler
from engine.stream.runner import LiveSession
from engine.stream.session import Session

Output = list[tuple[int, torch.Tensor, np.ndarray]]


class CountingBackend(TorchEagerBackend):
    """The eager backend, recording the batch of every backbone call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def backbone(self, inputs):
        self.batches.append(inputs.sample.shape[0])
        return super().backbone(inputs)


def voice(seconds: float, seed: int) -> np.ndarray:
    """Session ``seed``'s speech: its own pitch (120 + 40 x seed Hz) and noise."""
    return speech(seconds, hz=120 + 40 * seed, noise=0.02, seed=seed)


def blocks_of(pcm: np.ndarray, seconds: float) -> list[np.ndarray]:
    step = int(seconds * SR)
    return [pcm[i:i + step] for i in range(0, pcm.size, step)]


# Per session: audio blocks and options. 1 goes silent, 2 ends early, 3 is a rolling window (other shapes).
STREAMS = [
    (blocks_of(voice(0.64, 1), 0.1), dict()),
    (blocks_of(np.concatenate([voice(0.24, 2), np.zeros(int(0.4 * SR), np.float32)]), 0.16), dict()),
    ([voice(0.2, 3)], dict()),
    (blocks_of(voice(0.4, 4), 0.2), dict(schedule="rolling", group_frames=2)),
]


def make_session(model, portrait, backend, index: int) -> Session:
    options = dict(steps=2, first_clip_frames=4, seed=index, **STREAMS[index][1])
    return Session(backend, model.config, *portrait, GenerationOptions(**options))


def drive(session: Session, blocks: list[np.ndarray], end: bool = True) -> Output:
    """Push ``blocks`` one by one, running every clip as soon as it is ready.

    Returns (start frame, clean latents, uint8 frames) per clip, in the order they finished.
    """
    out: Output = []

    def emit(finished) -> None:
        for clip, latents in finished:
            frames = np.stack([f.image for f in session.decode(clip, latents)])
            out.append((clip.start, latents, frames))

    for block in blocks:
        session.push_audio(block)
        for clip in session.ready_clips():
            emit(session.step(clip))
    if end:
        session.end()
        for clip in session.ready_clips():
            emit(session.step(clip))
        emit(session.flush())
    return out


def finish(session: Session, blocks: list[np.ndarray]) -> Output:
    """:func:`drive` on a session of a scheduler, then give its slot back."""
    out = drive(session, blocks)
    session.backend.detach()
    return out


def run_threads(targets: list, timeout: float) -> list:
    """Run each callable in its own thread; their results (a thread still running after ``timeout`` fails the test)."""
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = targets[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"sessions still running after {timeout} s"
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def batched(model, portrait):
    """The four sessions at once on one scheduler: (outputs per session, backbone batches, scheduler occupancy)."""
    inner = CountingBackend(model)
    scheduler = BatchScheduler(inner, slots=4, gather_s=0.2)
    try:
        sessions = [make_session(model, portrait, scheduler.attach(), i) for i in range(4)]
        outputs = run_threads([lambda i=i: finish(sessions[i], STREAMS[i][0]) for i in range(4)], timeout=120)
    finally:
        scheduler.close()
    return outputs, inner.batches, scheduler.occupancy


@pytest.fixture(scope="module")
def alone(model, portrait):
    """Each session run alone, in its own slot of its own scheduler: (outputs, backbone calls) per session."""
    results = []
    for i in range(4):
        scheduler = BatchScheduler(TorchEagerBackend(model), slots=4)
        try:
            results.append((drive(make_session(model, portrait, scheduler.attach(slot=i), i), STREAMS[i][0]),
                            scheduler.occupancy[1]))
        finally:
            scheduler.close()
    return results


def test_each_session_gets_bitwise_its_frames_alone(batched, alone):
    outputs, _, _ = batched
    for i, (together, (by_itself, _)) in enumerate(zip(outputs, alone)):
        assert [start for start, _, _ in together] == [start for start, _, _ in by_itself], f"session {i}"
        assert len(together) >= 2, "every session runs more than one clip"
        for (start, latents, frames), (_, latents_alone, frames_alone) in zip(together, by_itself):
            assert torch.equal(latents, latents_alone), f"session {i}, clip at frame {start}: latents differ"
            assert np.array_equal(frames, frames_alone), f"session {i}, clip at frame {start}: frames differ"


def test_sessions_share_backbone_calls(batched, alone):
    _, batches, occupancy = batched
    requests = sum(calls for _, calls in alone)
    assert sum(n * calls for n, calls in occupancy.items()) == requests, "every backbone call of every session served"
    assert len(batches) == sum(occupancy.values()) < requests
    assert max(occupancy) > 1, "some calls carry more than one session"
    assert set(batches) == {4}, "always the fixed batch: 4 slots of one guidance branch"


def test_stalled_session_holds_no_one_back(model, portrait):
    scheduler = BatchScheduler(TorchEagerBackend(model), slots=4, gather_s=0.2)
    try:
        make_session(model, portrait, scheduler.attach(), 3)  # attached, never pushes audio
        stalled = make_session(model, portrait, scheduler.attach(), 0)
        drive(stalled, [voice(0.24, 9)], end=False)  # one clip, then never another block nor an end
        sessions = [make_session(model, portrait, scheduler.attach(), i) for i in (1, 2)]
        outputs = run_threads([lambda i=i: finish(sessions[i - 1], STREAMS[i][0]) for i in (1, 2)], timeout=60)
    finally:
        scheduler.close()
    assert all(len(out) >= 2 for out in outputs), "both live sessions finished while the stalled ones stayed attached"


def test_live_sessions_on_one_scheduler_stream_their_frames(model, portrait, alone):
    scheduler = BatchScheduler(TorchEagerBackend(model), slots=4, gather_s=0.2)
    try:
        lives = {i: LiveSession(make_session(model, portrait, scheduler.attach(slot=i), i)) for i in (0, 2)}
        for i, live in lives.items():
            for block in STREAMS[i][0]:
                live.push_audio(block)
            live.end()
        frames = run_threads([lambda live=live: [f.image for f in live] for live in lives.values()], timeout=60)
    finally:
        scheduler.close()
    for i, images in zip(lives, frames):
        expected = np.concatenate([clip_frames for _, _, clip_frames in alone[i][0]])
        assert np.array_equal(np.stack(images), expected), f"live session {i}"


def test_attach_refuses_a_full_or_taken_slot(model):
    scheduler = BatchScheduler(TorchEagerBackend(model), slots=2)
    try:
        first = scheduler.attach(slot=1)
        with pytest.raises(RuntimeError):
            scheduler.attach(slot=1)
        assert scheduler.attach().slot == 0
        with pytest.raises(RuntimeError):
            scheduler.attach()
        first.detach()
        assert scheduler.attach().slot == 1
    finally:
        scheduler.close()
    with pytest.raises(RuntimeError):
        scheduler.attach()
