"""TimelineAudio: the samples kept for playback beside the video, cut by a barge-in, freed once played."""

from __future__ import annotations

import numpy as np

from engine.stream.idle import TimelineAudio


def test_read_truncate_and_forget_keep_sample_indices():
    audio = TimelineAudio()
    audio.append(np.arange(100, dtype=np.float32))
    audio.append(np.arange(100, 150, dtype=np.float32))
    assert audio.end == 150
    np.testing.assert_array_equal(audio.read(95, 10), np.arange(95, 105))
    audio.forget_before(40)
    assert audio.first == 40 and audio.end == 150
    np.testing.assert_array_equal(audio.read(30, 15), np.arange(40, 45)), "nothing before what was freed"
    audio.truncate(120)
    assert audio.end == 120 and audio.read(110, 50).size == 10
    audio.append(np.full(5, -1, np.float32))
    np.testing.assert_array_equal(audio.read(118, 4), [118, 119, -1, -1])
    audio.forget_before(1000)
    assert audio.first == audio.end == 125 and audio.read(0, 1000).size == 0
