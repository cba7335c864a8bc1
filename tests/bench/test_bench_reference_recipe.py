"""The reference recipe does what Hallo's code does: network calls counted, guidance inputs checked.

And, beside it, the engine's calls for the same audio: the reference bank once per session, one
backbone branch per step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.recipes import HALLO_GUIDANCE, HALLO_STEPS, HalloRecipe
from bench.recording import RecordingBackend, count_calls
from engine.backends.torch_eager import TorchEagerBackend
from engine.config import preset
from engine.models.checkpoint import random_model
from engine.options import GenerationOptions
from engine.sampling.clip_denoiser import GuidedBackbone
from engine.sampling.guidance import GuidanceScales, branches_needed
from engine.stream.session import Session

SR = 16000
SIZE = 32
CLIP = 4


@pytest.fixture(scope="module")
def model():
    cfg = dataclasses.replace(preset("tiny"), clip_frames=CLIP)
    model = random_model(cfg, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the face locator's zero-initialised output conv would hide which branch reads it
        for p in model.face_locator.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def portrait():
    rng = np.random.RandomState(0)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[8:24, 10:22] = 1
    return (rng.rand(SIZE, SIZE, 3) * 255).astype(np.uint8), mask


def speech(frames: int, fps: float = 25.0) -> np.ndarray:
    t = np.arange(round(frames * SR / fps)) / SR
    return (0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


class InputsBackend(TorchEagerBackend):
    """The eager backend keeping the first backbone call's inputs."""

    first_backbone: dict | None = None

    def backbone(self, sample, timestep, **kwargs):
        if self.first_backbone is None:
            self.first_backbone = {k: v for k, v in kwargs.items()}
        return super().backbone(sample, timestep, **kwargs)


def test_reference_recipe_counts_hallo_calls(model, portrait):
    image, mask = portrait
    recorder = RecordingBackend(TorchEagerBackend(model))
    recipe = HalloRecipe(recorder, model.config, image, mask)
    frames = list(recipe.generate(speech(6)))

    assert [f.index for f in frames] == list(range(6))
    clips, n = 2, model.config.motion_frames
    calls = recorder.take_calls()
    assert count_calls(calls) == {"audio_tokens": 1, "vae_encode": clips, "reference": clips,
                                  "face_features": clips, "speed_tokens": clips,
                                  "backbone": clips * HALLO_STEPS, "vae_decode": clips * CLIP}
    backbone = [c for c in calls if c.network == "backbone"]
    assert all(c.batch() == 2 and c.frames() == CLIP for c in backbone), "both guidance branches in one batch"
    reference = [c for c in calls if c.network == "reference"]
    assert all(c.batch() == 2 * (1 + n) for c in reference), "reference + motion frames, doubled for guidance"
    encode = [c for c in calls if c.network == "vae_encode"]
    assert all(c.batch() == 1 + n for c in encode)
    assert all(c.frames() == 1 for c in calls if c.network == "vae_decode"), "Hallo decodes frame by frame"
    audio = next(c for c in calls if c.network == "audio_tokens")
    assert audio.args[1] == clips * CLIP, "the whole utterance, padded to whole clips, encoded at once"
    assert recipe.steps == 40 and recipe.guidance == 3.5 and HALLO_GUIDANCE == 3.5


def test_reference_recipe_unconditional_branch_drops_reference_audio_and_face(model, portrait):
    image, mask = portrait
    backend = InputsBackend(model)
    recipe = HalloRecipe(backend, model.config, image, mask, steps=1)
    list(recipe.generate(speech(CLIP)))

    inputs = backend.first_backbone
    keep = inputs["reference_keep"].tolist()
    assert sorted(keep) == [False, True], "one conditional and one unconditional branch"
    uncond, cond = keep.index(False), keep.index(True)
    assert inputs["audio_tokens"].shape[0] == 2
    assert torch.count_nonzero(inputs["audio_tokens"][uncond]) == 0
    assert torch.count_nonzero(inputs["audio_tokens"][cond]) > 0
    assert torch.count_nonzero(inputs["face_features"][uncond]) == 0
    assert torch.count_nonzero(inputs["face_features"][cond]) > 0
    assert inputs["face_features"].shape[1] == CLIP, "the face locator runs on every frame's mask"


def test_reference_recipe_builds_the_engines_guidance_batch(model, portrait):
    """One implementation of the peers' guidance batch: the recipe's backbone inputs are the engine's."""
    image, mask = portrait
    backend = InputsBackend(model)
    recipe = HalloRecipe(backend, model.config, image, mask, steps=1)
    list(recipe.generate(speech(CLIP)))

    assert isinstance(recipe.denoiser.model, GuidedBackbone)
    assert recipe.denoiser.model.branches == branches_needed(GuidanceScales(HALLO_GUIDANCE, HALLO_GUIDANCE))
    assert backend.first_backbone["reference_keep"].tolist() == [b.uses_reference
                                                                 for b in recipe.denoiser.model.branches]


def test_engine_caches_the_reference_and_runs_one_branch(model, portrait):
    image, mask = portrait
    recorder = RecordingBackend(TorchEagerBackend(model))
    session = Session(recorder, model.config, image, mask, GenerationOptions(steps=4))
    recorder.phase = "stream"
    session.push_audio(speech(6))
    session.end()
    frames = list(session.frames())

    assert len(frames) == 6
    calls = recorder.take_calls()
    assert count_calls(calls, "session")["reference"] == 1, "the reference bank: once per session"
    stream = count_calls(calls, "stream")
    assert stream["backbone"] == 2 * 4, "one backbone call per step per clip"
    assert stream["reference"] == 2, "the ReferenceNet per clip only on the motion frames"
    assert "vae_encode" not in stream
    assert all(c.batch() == 1 for c in calls if c.network == "backbone"), "no guidance: one branch"
    session_reference = next(c for c in calls if c.network == "reference" and c.phase == "session")
    assert session_reference.batch() == 1
