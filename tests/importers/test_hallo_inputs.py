"""An imported tiny Hallo model with its region masks and face embedding on the generation path:
masks and face tokens reach every backbone call (and the tokens every ReferenceNet call) of a session,
they change what the backbone computes, and ``emote generate``'s fallback note names only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import random_portrait, speech, write_wav

from engine.backends.torch_eager import TorchEagerBackend
from engine.faces import FaceBox, box_mask
from engine.importers.provenance import FACE_EMBEDDING, PROVENANCE_FILE, REGION_MASKS, fallback_note
from engine.models.backbone_inputs import BackboneInputs
from engine.models.checkpoint import load_model
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from engine.pipeline import GenerateRequest, generate, supplied_inputs
from engine.stream.session import Session

PORTRAIT = Path(__file__).resolve().parents[2] / "engine" / "assets" / "demo" / "portrait.png"
SIZE = 128
OPTIONS = dict(steps=1, clip_frames=4, cfg_audio=3.5, cfg_ref=3.5)


class RecordingBackend(TorchEagerBackend):
    """The eager backend, keeping what the backbone and the ReferenceNet receive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_calls: list[dict] = []
        self.reference_contexts: list[torch.Tensor | None] = []

    def backbone(self, inputs):
        self.backbone_calls.append(inputs.kwargs())
        return super().backbone(inputs)

    def reference(self, latents, context=None):
        self.reference_contexts.append(context)
        return super().reference(latents, context=context)


@pytest.fixture(scope="module")
def model(hallo_model: Path) -> EmoteModel:
    return load_model(hallo_model)


@pytest.fixture(scope="module")
def hallo_portrait() -> tuple[np.ndarray, np.ndarray]:
    """A random portrait with the face box's mask, as the engine draws it from a detected face."""
    return random_portrait(SIZE)[0], box_mask(FaceBox(36, 28, 92, 100), SIZE)


@pytest.fixture(scope="module")
def embedding(model: EmoteModel) -> np.ndarray:
    return np.random.RandomState(1).randn(model.config.image_proj.embedding_dim).astype(np.float32)


def run(model: EmoteModel, hallo_portrait, seconds: float = 0.3, **inputs) -> tuple[RecordingBackend, np.ndarray]:
    backend = RecordingBackend(model)
    session = Session(backend, model.config, *hallo_portrait, GenerationOptions(**OPTIONS), **inputs)
    session.push_audio(speech(seconds, hz=170, syllable_hz=4))
    session.end()
    frames = np.stack([frame.image for frame in session.frames()])
    return backend, frames


def test_every_backbone_call_gets_the_masks_and_no_face_tokens_without_an_embedding(model, hallo_portrait):
    backend, _ = run(model, hallo_portrait)
    assert len(backend.backbone_calls) == 2
    levels = len(model.config.unet.block_out_channels)
    for call in backend.backbone_calls:
        masks = call["region_masks"]
        assert len(masks) == levels and masks[0].shape == (2, 3, (SIZE // 8) ** 2)
        assert torch.equal(masks[0][0], masks[0][1])  # the same masks in both guidance branches
        assert not masks[0][0, 0].eq(1).all()  # the face box's masks, not weight 1 everywhere
        assert call["image_tokens"] is None
    assert backend.reference_contexts and all(c is None for c in backend.reference_contexts)


def test_face_tokens_reach_every_backbone_and_reference_call(model, hallo_portrait, embedding):
    backend, frames = run(model, hallo_portrait, face_embedding=embedding)
    _, fallback_frames = run(model, hallo_portrait)
    with torch.no_grad():
        tokens = model.image_proj(torch.from_numpy(embedding)[None])
    assert not torch.allclose(tokens[0], model.backbone.default_image_tokens)
    for call in backend.backbone_calls:
        torch.testing.assert_close(call["image_tokens"][0], tokens[0])  # conditional branch: the face
        torch.testing.assert_close(call["image_tokens"][1], model.backbone.default_image_tokens)  # unconditional
    assert len(backend.reference_contexts) >= 2  # the reference image and the motion frames
    zero = model.backbone.default_image_tokens[None]
    # Hallo's reference reader (reproduced under single-scale CFG): the ReferenceNet reads the face's tokens
    # and, for the rows Hallo runs with it, the zero embedding's
    faces = [c for c in backend.reference_contexts if torch.allclose(c, tokens)]
    zeros = [c for c in backend.reference_contexts if torch.allclose(c, zero)]
    assert faces and zeros and len(faces) + len(zeros) == len(backend.reference_contexts)
    assert np.abs(frames.astype(np.int16) - fallback_frames).max() > 0


def test_masks_change_the_backbone_output(model, hallo_portrait):
    backend, _ = run(model, hallo_portrait)
    call = dict(backend.backbone_calls[0])
    sample = torch.randn(2, 4, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    timestep = torch.full((2, 4), 500.0)
    call.update(sample=sample, timestep=timestep)
    with_masks = backend.backbone(BackboneInputs(**call))
    call["region_masks"] = None
    without = backend.backbone(BackboneInputs(**call))
    assert (with_masks - without).abs().max() > 1e-3


def test_generate_reads_the_embedding_and_mask_files(hallo_model, tmp_path):
    cfg = load_model(hallo_model).config
    np.save(tmp_path / "face.npy", np.ones(cfg.image_proj.embedding_dim, np.float32))
    width, height = Image.open(PORTRAIT).size
    face, lip = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    face[height // 5: 4 * height // 5, width // 4: 3 * width // 4] = 255
    lip[3 * height // 5: 7 * height // 10, 2 * width // 5: 3 * width // 5] = 255
    Image.fromarray(face).save(tmp_path / "face.png")
    np.save(tmp_path / "lip.npy", lip)
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech(0.3, hz=170, syllable_hz=4))
    request = GenerateRequest(image=PORTRAIT, audio=wav, out=tmp_path / "out.mp4", model=str(hallo_model),
                              face_embedding=tmp_path / "face.npy", face_mask=tmp_path / "face.png",
                              lip_mask=tmp_path / "lip.npy", options=GenerationOptions(steps=1, clip_frames=4))
    assert supplied_inputs(request) == (FACE_EMBEDDING, REGION_MASKS)
    result = generate(request, progress=False)
    assert result.frames == 8 and (tmp_path / "out.mp4").is_file()
    with pytest.raises(ValueError, match="both the face mask and the lip mask"):
        generate(GenerateRequest(image=PORTRAIT, audio=wav, out=tmp_path / "x.mp4", model=str(hallo_model),
                                 face_mask=tmp_path / "face.png"), progress=False)


def test_fallback_note_names_only_what_the_user_did_not_give(hallo_model):
    note = fallback_note(hallo_model)
    assert "face embedding" in note and "region masks" in note and "vocal separation" in note
    assert "made from the face box" in note and "weights 1 everywhere" not in note
    partial = fallback_note(hallo_model, supplied=(FACE_EMBEDDING,))
    assert "face embedding" not in partial and "region masks" in partial
    both = fallback_note(hallo_model, supplied=(FACE_EMBEDDING, REGION_MASKS))
    assert both.startswith("note: hallo import runs with fallbacks: vocal separation:") and ";" not in both


def test_fallback_note_describes_what_runs_now_for_an_older_import(tmp_path):
    older = {"system": "hallo", "fallbacks": ["region masks: none (mediapipe) -> full / face / lip weights 1 "
                                              "everywhere", "other input: recorded text"]}
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps(older))
    note = fallback_note(tmp_path)
    assert "weights 1 everywhere" not in note and "made from the face box" in note and "recorded text" in note
    assert fallback_note(tmp_path, supplied=(REGION_MASKS, "other input")) is None
