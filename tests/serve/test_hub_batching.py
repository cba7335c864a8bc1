"""Session batching in the hub (``ServeConfig.batch_gather_ms``): off by default; on, the hub's live sessions
share backbone calls, stream all their frames, and give their batching slots back when released."""

from __future__ import annotations

import threading

import numpy as np
from support import speech

from engine.serve.hub import SessionHub
from tests.serve.conftest import serve_config

FPS = 25


def stream(hub: SessionHub, audios: list[np.ndarray]) -> list[list[int]]:
    """One hub session per audio, all at once; the frame indices each one gave."""
    ids = [hub.reserve() for _ in audios]
    lives = [hub.build(session_id, None)[0] for session_id in ids]
    indices: list[list[int]] = [[] for _ in audios]

    def take(i: int) -> None:
        lives[i].push_audio(audios[i])
        lives[i].end()
        indices[i] = [frame.index for frame in lives[i]]

    threads = [threading.Thread(target=take, args=(i,), daemon=True) for i in range(len(audios))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "sessions still streaming after 60 s"
    for session_id in ids:
        hub.release(session_id)
    return indices


def test_batching_is_off_by_default(engine):
    backend, model_config = engine
    hub = SessionHub(backend, model_config, serve_config())
    try:
        assert hub.config.batch_gather_ms is None and hub.scheduler is None
    finally:
        hub.close()


def test_hub_sessions_share_backbone_calls_and_free_their_slots(engine):
    backend, model_config = engine
    hub = SessionHub(backend, model_config, serve_config(max_sessions=2, batch_gather_ms=200))
    try:
        for round_ in range(2):  # the second round fits only if the first gave its batching slots back
            indices = stream(hub, [speech(0.48, 150 + 50 * round_), speech(0.48, 260)])
            assert indices == [list(range(round(0.48 * FPS)))] * 2
            assert hub.active == 0
        assert max(hub.scheduler.occupancy) == 2, "some backbone calls carried both sessions"
    finally:
        hub.close()
