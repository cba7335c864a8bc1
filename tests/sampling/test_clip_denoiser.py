"""Guidance branches batched for one backbone call: which branch reads what of Hallo's inputs."""

from __future__ import annotations

import pytest
import torch

from engine.sampling.clip_denoiser import ClipConditions, GuidedBackbone, window_conditions
from engine.sampling.guidance import GuidanceScales

T, D = 4, 6


def conditions(**hallo) -> ClipConditions:
    return ClipConditions(audio_tokens=torch.randn(1, 3, 2, 5), reference_bank=[torch.randn(1, 8, 5)],
                          motion_features=[torch.randn(1, 2, 5, 2, 2)], face_features=torch.randn(1, 1, 5, 4, 4),
                          speed_tokens=None, **hallo)


@pytest.fixture
def hallo() -> dict:
    return dict(image_tokens=torch.randn(1, T, D), uncond_image_tokens=torch.randn(1, T, D),
                region_masks=[torch.rand(1, 3, 16), torch.rand(1, 3, 4)])


def test_models_without_hallo_inputs_get_no_new_arguments():
    batched = GuidedBackbone(None, GuidanceScales(reference=2.0, audio=3.0)).batched(conditions())
    assert batched.image_tokens is None and batched.region_masks is None


@pytest.mark.parametrize(("scales", "uses_face"), [
    ((1.0, 1.0), [True]),
    ((1.0, 2.0), [True, True]),  # full, ref_only
    ((3.5, 3.5), [True, False]),  # full, uncond: Hallo's guidance
    ((2.0, 3.0), [True, True, False]),
])
def test_face_tokens_follow_the_reference_and_masks_are_shared(hallo, scales, uses_face):
    model = GuidedBackbone(None, GuidanceScales(reference=scales[0], audio=scales[1]))
    batched = model.batched(conditions(**hallo))
    assert batched.reference_keep.tolist() == uses_face
    tokens = batched.image_tokens
    assert tokens.shape == (len(uses_face), T, D)
    for row, face in zip(tokens, uses_face):
        assert torch.equal(row, hallo["image_tokens"][0] if face else hallo["uncond_image_tokens"][0])
    for got, given in zip(batched.region_masks, hallo["region_masks"], strict=True):
        assert got.shape == (len(uses_face), *given.shape[1:])
        assert all(torch.equal(m, given[0]) for m in got)


def test_face_tokens_without_uncond_tokens_need_no_unconditional_branch(hallo):
    cond = conditions(image_tokens=hallo["image_tokens"])
    assert GuidedBackbone(None, GuidanceScales(audio=2.0)).batched(cond).image_tokens.shape[0] == 2
    with pytest.raises(ValueError, match="uncond_image_tokens"):
        GuidedBackbone(None, GuidanceScales(reference=2.0, audio=2.0)).batched(cond)


@pytest.mark.parametrize(("scales", "layout"), [
    ((1.0, 1.0), [(True, True)]),
    ((1.0, 2.0), [(True, True), (True, False)]),  # full, ref_only
    ((3.5, 3.5), [(True, True), (False, False)]),  # full, uncond: Hallo's and EchoMimic's CFG
    ((2.0, 3.0), [(True, True), (True, False), (False, False)]),
])
def test_unconditional_branch_gets_zero_face_features_and_audio(scales, layout):
    cond = conditions()
    batched = GuidedBackbone(None, GuidanceScales(reference=scales[0], audio=scales[1])).batched(cond)
    assert batched.reference_keep.tolist() == [reference for reference, _ in layout]
    assert batched.face_features.shape == (len(layout), *cond.face_features.shape[1:])
    assert batched.audio_tokens.shape == (len(layout), *cond.audio_tokens.shape[1:])
    for face, audio, (reference, uses_audio) in zip(batched.face_features, batched.audio_tokens, layout):
        assert torch.equal(face, cond.face_features[0] if reference else torch.zeros_like(face))
        assert torch.equal(audio, cond.audio_tokens[0] if uses_audio else torch.zeros_like(audio))


@pytest.mark.parametrize("face_frames", [1, 3])
def test_a_window_gathers_the_per_frame_inputs_in_its_order(face_frames):
    cond = conditions()
    cond.speed_tokens = torch.randn(1, 3, 2, 6)
    cond.face_features = torch.randn(1, face_frames, 5, 4, 4)
    index = torch.tensor([2, 0])
    window = window_conditions(cond, index)
    assert torch.equal(window.audio_tokens, cond.audio_tokens[:, [2, 0]])
    assert torch.equal(window.speed_tokens, cond.speed_tokens[:, [2, 0]])
    face = cond.face_features if face_frames == 1 else cond.face_features[:, [2, 0]]
    assert torch.equal(window.face_features, face)
    assert window.reference_bank is cond.reference_bank and window.motion_features is cond.motion_features
