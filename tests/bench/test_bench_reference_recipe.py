"""The reference recipe does what Hallo's code does: network calls counted, guidance inputs checked.

And, beside it, the engine's calls for the same audio: the reference bank once per session, one
backbone branch per step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_sources import write_hallo

from bench.recipes import HALLO_GUIDANCE, HALLO_STEPS, HalloRecipe
from bench.recording import RecordingBackend, count_calls
from engine.backends.torch_eager import TorchEagerBackend
from engine.config import preset
from engine.importers.run import import_model
from engine.models.checkpoint import load_model, random_model
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

    def backbone(self, inputs):
        if self.first_backbone is None:
            self.first_backbone = inputs.kwargs()
        return super().backbone(inputs)


def test_reference_recipe_runs_the_offline_session_in_hallos_form(model, portrait):
    """Hallo's pipeline through the engine's offline session: the reference's bank and face features once per
    session; the utterance padded to whole clips and encoded at once, 40 doubled backbone batches per clip,
    each clip decoded, its last n frames through VAE decode + encode and the ReferenceNet as motion frames."""
    image, mask = portrait
    recorder = RecordingBackend(TorchEagerBackend(model))
    recipe = HalloRecipe(recorder, model.config, image, mask)
    assert count_calls(recorder.take_calls()) == {"vae_encode": 1, "reference": 1, "face_features": 1}
    frames = list(recipe.generate(speech(6)))

    assert [f.index for f in frames] == list(range(6))
    clips, n = 2, model.config.motion_frames
    calls = recorder.take_calls()
    assert count_calls(calls) == {"audio_tokens": 1, "speed_tokens": 1, "backbone": clips * HALLO_STEPS,
                                  "vae_decode": 2 * clips, "vae_encode": clips, "reference": clips}
    backbone = [c for c in calls if c.network == "backbone"]
    assert all(c.batch() == 2 and c.frames() == CLIP for c in backbone), "both guidance branches in one batch"
    assert sorted(c.frames() for c in calls if c.network == "vae_decode") == [n] * clips + [CLIP] * clips
    assert all(c.batch() == n for c in calls if c.network in ("vae_encode", "reference")), "motion frames"
    audio = next(c for c in calls if c.network == "audio_tokens")
    assert audio.args[1] == clips * CLIP, "the whole utterance, padded to whole clips, encoded at once"
    assert recipe.steps == 40 and recipe.guidance == 3.5 and HALLO_GUIDANCE == 3.5
    assert recipe.config.motion_init == "reference" and recipe.config.reproduce.motion_roundtrip


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


@pytest.fixture(scope="module")
def hallo_model(tmp_path_factory):
    """The tiny Hallo checkout, imported."""
    out = tmp_path_factory.mktemp("hallo") / "model"
    import_model("hallo", write_hallo(tmp_path_factory.mktemp("hallo_src")), out)
    return load_model(out)


def test_reference_recipe_on_an_imported_hallo_model_is_its_offline_generation(hallo_model):
    """On an imported Hallo model the recipe is the engine's offline generation of it: Hallo's reference reader
    (a bank row per frame, the face-embedding tokens per branch) in the backbone batch, the same frames."""
    config = hallo_model.config
    size = config.resolution
    image = (np.random.RandomState(1).rand(size, size, 3) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    embedding = np.random.RandomState(2).randn(config.image_proj.embedding_dim).astype(np.float32)
    pcm = speech(3, fps=config.fps)
    backend = InputsBackend(hallo_model)
    recipe = HalloRecipe(backend, config, image, mask, steps=1, face_embedding=embedding)
    frames = list(recipe.generate(pcm))

    inputs = backend.first_backbone
    assert recipe.config is config
    assert inputs["reference_bank"][0].shape[0] == 2 * config.clip_frames, "Hallo's reader: a bank row per frame"
    assert inputs["image_tokens"].shape[0] == 2
    session = Session(TorchEagerBackend(hallo_model), config, image, mask,
                      GenerationOptions(steps=1, cfg_audio=HALLO_GUIDANCE, cfg_ref=HALLO_GUIDANCE, offline=True),
                      face_embedding=embedding)
    session.push_audio(pcm)
    session.end()
    generated = list(session.frames())
    assert [f.index for f in frames] == [f.index for f in generated] == [0, 1, 2]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, generated))
