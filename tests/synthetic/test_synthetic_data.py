"""The synthetic talking-face generator: determinism, and ground truth that agrees with what is drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.lipsync import mouth_opening
from engine.synthetic.clips import HeadMotion, eyes_open_at, make_clip, recipe
from engine.synthetic.dataset import CacheSpec, build_cache, clip_path, load_clip
from engine.synthetic.face_drawing import Identity, Pose, render
from engine.synthetic.speech import SAMPLE_RATE, Voice, resample, synthesize
from engine.synthetic.visemes import mouth_track, viseme


@pytest.fixture(scope="module")
def moving_clip():
    return make_clip(3, "train", head_motion=True, sentences=1)


@pytest.fixture(scope="module")
def still_clip():
    return make_clip(4, "train", head_motion=False, sentences=1)


def test_speech_is_deterministic_and_timed():
    a = synthesize("Maybe Bob will open the window.", Voice("en-us", 160))
    b = synthesize("Maybe Bob will open the window.", Voice("en-us", 160))
    assert a.sample_rate == SAMPLE_RATE and a.pcm.dtype == np.float32
    assert np.array_equal(a.pcm, b.pcm) and a.phonemes == b.phonemes
    starts = [p.start for p in a.phonemes]
    assert starts == sorted(starts) and a.phonemes[-1].end <= a.duration + 1e-3
    assert {"m", "b"} <= {p.symbol for p in a.phonemes}
    # Phoneme times line up with the audio: vowels are loud, the final pause is quiet.
    def rms(p):
        seg = a.pcm[int(p.start * SAMPLE_RATE):int(p.end * SAMPLE_RATE)]
        return float(np.sqrt(np.mean(seg ** 2))) if seg.size else 0.0
    vowels = [rms(p) for p in a.phonemes if viseme(p.symbol).opening >= 0.6]
    pauses = [rms(p) for p in a.phonemes if p.symbol.startswith("_") and p.end - p.start > 0.05]
    assert vowels and min(vowels) > 5 * max(pauses + [1e-4])


def test_resample_is_accurate_and_unshifted():
    t = np.arange(22050) / 22050
    out = resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    expected = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert out.shape == (16000,)
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 1e-3


def test_visemes():
    assert viseme("m").opening == 0 and viseme("p").opening == 0 and viseme("_:").opening == 0
    assert viseme("aI").opening > 0.8 and viseme("A:").opening > 0.8
    assert viseme("u:").width < 0.8 < 1.05 < viseme("i:").width


def test_mouth_track_follows_phonemes():
    speech = synthesize("Papa, mama.", Voice("en", 140))
    track = mouth_track(speech.phonemes, speech.duration, 40, 25.0)
    assert track.opening.shape == (40,) and track.opening.dtype == np.float32
    assert track.opening[0] < 0.05
    assert track.opening.max() > 0.6
    assert (track.opening[math.ceil(speech.duration * 25) + 1:] == 0).all()


def test_clips_are_deterministic(moving_clip):
    again = make_clip(3, "train", head_motion=True, sentences=1)
    for name in ("frames", "audio", "opening", "roll", "head_speed", "face_boxes", "mouth_box", "reference"):
        assert np.array_equal(getattr(moving_clip, name), getattr(again, name)), name
    other = make_clip(3, "heldout", head_motion=True, sentences=1)
    assert other.recipe.text != moving_clip.recipe.text or other.recipe.identity != moving_clip.recipe.identity


def test_clip_shapes_and_frame_grid(moving_clip):
    c = moving_clip
    frames = math.ceil(c.audio.shape[0] * c.fps / c.sample_rate - 1e-9)
    assert c.frames.shape == (frames, 64, 64, 3) and c.frames.dtype == np.uint8
    for name in ("opening", "width", "eyes_open", "roll", "head_speed"):
        assert getattr(c, name).shape == (frames,)
    assert c.face_boxes.shape == (frames, 4) and c.mouth_box.shape == (4,)


def test_ground_truth_matches_pixels(moving_clip, still_clip):
    # The box is where the mouth is with the head upright; a rolling head moves it partly out.
    for clip, bound in ((still_clip, 0.9), (moving_clip, 0.75)):
        measured = mouth_opening(clip.frames, clip.mouth_box)
        assert np.corrcoef(measured, clip.opening)[0, 1] > bound
    closed = render(still_clip.recipe.identity, Pose(opening=0.0), 64)
    wide = render(still_clip.recipe.identity, Pose(opening=1.0), 64)
    assert mouth_opening(closed[None], still_clip.mouth_box)[0] < 2.0 < 10.0 < mouth_opening(wide[None],
                                                                                          still_clip.mouth_box)[0]


def test_head_speed_is_the_roll_derivative(moving_clip, still_clip):
    c = moving_clip
    numeric = np.abs(np.gradient(c.roll.astype(np.float64), 1 / c.fps))
    assert np.abs(numeric[1:-1] - c.head_speed[1:-1]).max() < 0.08
    assert c.head_speed.max() > 0.1
    assert np.all(still_clip.roll == 0) and np.all(still_clip.head_speed == 0)
    # Still head: every frame matches the rest pose wherever mouth and eyes do not move.
    assert np.array_equal(still_clip.face_boxes, np.repeat(still_clip.face_boxes[:1], still_clip.num_frames, 0))


def test_face_boxes_contain_the_mouth(moving_clip):
    mx0, my0, mx1, my1 = moving_clip.mouth_box
    boxes = moving_clip.face_boxes
    assert (boxes[:, 0] < mx0).all() and (boxes[:, 2] > mx1).all() and (boxes[:, 1] < my0).all()
    assert (boxes[:, 3] > my1 - 4).all()


def test_blinks():
    t = np.array([0.0, 1.0, 1.05, 1.2])
    assert np.allclose(eyes_open_at(t, (1.0,)), [1.0, 0.0, 0.05 / 0.09, 1.0])
    ident = Identity()
    open_eyes, shut = render(ident, Pose(eyes_open=1.0), 64), render(ident, Pose(eyes_open=0.0), 64)
    assert np.abs(open_eyes.astype(int) - shut.astype(int)).sum() > 500


def test_head_motion_speed_formula():
    head = HeadMotion((0.1,), (0.5,), (0.0,))
    assert head.speed(np.array([0.0]))[0] == pytest.approx(0.1 * 2 * np.pi * 0.5)
    assert head.roll(np.array([0.5]))[0] == pytest.approx(0.1)


def test_identities_vary():
    rng = np.random.default_rng(0)
    faces = [render(Identity.sample(rng), Pose(), 64) for _ in range(6)]
    assert len({f.tobytes() for f in faces}) == 6
    assert recipe(1).identity != recipe(2).identity


def test_cache_round_trip_and_resume(tmp_path):
    spec = CacheSpec(count=2, first_seed=7)
    folder = build_cache(tmp_path, spec, workers=1, progress=False)
    first = clip_path(folder, 7)
    stamp = first.stat().st_mtime_ns
    build_cache(tmp_path, spec, workers=1, progress=False)
    assert first.stat().st_mtime_ns == stamp
    loaded = load_clip(first)
    fresh = make_clip(7, "train")
    assert np.array_equal(loaded.frames, fresh.frames) and np.array_equal(loaded.audio, fresh.audio)
    assert loaded.recipe == fresh.recipe
