"""Imported models against their systems' own pipelines, end to end, stage by stage.

``fixtures/hallo_pipeline/oracle.npz`` is what Hallo's own ``scripts/inference.py`` computed on the tiny
Hallo tree: two 16-frame clips with motion frames, 4 DDIM steps, CFG 3.5. ``fixtures/echomimic_pipeline``
is EchoMimic v1's ``infer_audio2vid.py`` on the tiny EchoMimic tree: a 26-frame video in three overlapping
12-frame context windows, 4 DDIM steps, CFG 2.5. Both with the engine's noise injected (how: each folder's
README). Here the engine's offline session runs the imported trees on the same inputs, and every stage must
agree within 1e-4 of the oracle tensor's largest magnitude (fp32, CPU), so a failure says where they part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sources import FIXTURES

from engine.backends import make_backend
from engine.models.backbone_inputs import BackboneInputs
from engine.pipeline import OFFLINE_BLOCK_MS, open_model
from engine.timebase import SAMPLE_RATE
from engine.models.audio import echomimic_frame_count
from engine.sampling.clip_denoiser import AlternatingReference, context_windows, window_conditions
from engine.options import GenerationOptions
from engine.sampling.guidance import Branch, combine, split_batched
from engine.stream.session import Session

TOLERANCE = 1e-4
"""Largest difference allowed, relative to the oracle tensor's largest magnitude."""
HALLO_ORACLE = FIXTURES / "hallo_pipeline" / "oracle.npz"
ECHOMIMIC_ORACLE = FIXTURES / "echomimic_pipeline" / "oracle.npz"


def rel(ours: torch.Tensor | np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs| (shapes must match)."""
    ours = ours.detach().double().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def hallo_masks(oracle: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Hallo's full / face / lip masks per resolution level, ``[3, h_l * w_l]``, as its pipeline made them."""
    return [np.stack([oracle[f"mask_{name}_{level}"] for name in ("full", "face", "lip")]) for level in range(4)]


def bank_index(model, name: str) -> int:
    """Position in the ReferenceNet's bank of the transformer block ``name``."""
    return dict((n, m.bank_index) for n, m in model.reference_net.named_modules() if hasattr(m, "bank_index"))[name]


@pytest.fixture(scope="module")
def hallo_oracle() -> dict[str, np.ndarray]:
    return dict(np.load(HALLO_ORACLE))


@pytest.fixture(scope="module")
def hallo_run(hallo_model: Path, hallo_oracle: dict[str, np.ndarray]) -> dict:
    """The engine's offline session on the oracle's inputs; what it computed at each stage."""
    o = hallo_oracle
    torch.manual_seed(0)
    model = open_model(str(hallo_model))
    backend = make_backend("torch", model, "cpu", torch.float32)
    options = GenerationOptions(steps=len(o["timesteps"]), offline=True)
    session = Session(backend, model.config, o["portrait"], o["face_region"].astype(np.float32), options,
                      region_masks=hallo_masks(o), face_embedding=o["face_embedding"])
    pcm = o["pcm16"].astype(np.float32) / 32768.0
    block = int(SAMPLE_RATE * OFFLINE_BLOCK_MS / 1000)
    ready_before_end = 0
    for start in range(0, pcm.size, block):
        session.push_audio(pcm[start:start + block])
        ready_before_end += len(session.ready_clips())
    session.end()
    run = dict(session=session, model=model, ready_before_end=ready_before_end, clips=session.ready_clips(),
               conditions=[], noise=[], guided0=[], branches0=[], latents=[], frames=[])
    with torch.no_grad():
        for clip in run["clips"]:
            t0 = torch.full((1, clip.frames), float(o["timesteps"][0]))
            cond = session.conditions(clip)
            noise, _ = session.noise(clip)
            guided = session.denoiser.model
            batched = guided.batched(cond)
            out = backend.backbone(BackboneInputs.at(noise.expand(2, -1, -1, -1, -1), t0.expand(2, -1), batched))
            branches = split_batched(out, guided.branches)
            run["branches0"].append(branches)
            run["guided0"].append(combine(branches, guided.guidance))  # what GuidedBackbone returns
            run["conditions"].append(cond)
            run["noise"].append(noise)
            ((done, latents),) = session.step(clip)
            run["latents"].append(latents)
            run["frames"].append(session.decode(done, latents))
    return run


def test_hallo_offline_session_waits_for_the_whole_audio_and_pads_to_whole_clips(hallo_run, hallo_oracle):
    """Hallo pads the audio to whole clips and runs them full length; its video is cut back to the audio."""
    assert hallo_run["ready_before_end"] == 0
    assert [(c.start, c.end) for c in hallo_run["clips"]] == [(0, 16), (16, 32)]
    assert sum(len(f) for f in hallo_run["frames"]) == int(hallo_oracle["video_frames"]) == 25


def test_hallo_audio_front_end(hallo_run, hallo_oracle):
    """wav2vec2 hidden states of the whole padded waveform, then each clip's projected tokens."""
    o, model = hallo_oracle, hallo_run["model"]
    pcm = torch.from_numpy(o["pcm16"].astype(np.float32) / 32768.0)
    with torch.no_grad():
        features = model.audio_encoder.features(pcm, o["wav2vec_features"].shape[0])
    assert rel(features, o["wav2vec_features"]) <= TOLERANCE
    for i, cond in enumerate(hallo_run["conditions"]):
        assert rel(cond.audio_tokens[0], o["audio_tokens"][i]) <= TOLERANCE


def test_hallo_portrait_inputs(hallo_run, hallo_oracle):
    """Face-embedding tokens (zero embedding, face), face-locator features, the reference latent."""
    o, session = hallo_oracle, hallo_run["session"]
    assert rel(session.hallo.uncond_image_tokens[0], o["image_tokens"][0]) <= TOLERANCE
    assert rel(session.hallo.image_tokens[0], o["image_tokens"][1]) <= TOLERANCE
    assert rel(session.face[0, 0], o["face_features"]) <= TOLERANCE
    assert rel(session.reference_latent[0], o["reference_latents"][0, 0]) <= TOLERANCE
    assert rel(hallo_run["noise"][0][:, :, :1], o["noise_frame0"][0][None]) == 0.0


def test_hallo_reference_banks_per_context(hallo_run, hallo_oracle):
    """Hallo's ReferenceNet batch ``[reference, motion 1, motion 2] x 2`` reads contexts zero, face, zero, ...:
    its reference rows are our banks with the zero embedding's and the face's tokens."""
    o, session, model = hallo_oracle, hallo_run["session"], hallo_run["model"]
    assert session.alternating
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0", "mid_block.attentions.0.transformer_blocks.0"):
        theirs, index = o["bank." + name], bank_index(model, name)
        for row in (0, 3):
            assert rel(session.alternating_banks[row % 2][index][0], theirs[0, row]) <= TOLERANCE


def test_hallo_motion_frames_go_through_the_vae(hallo_run, hallo_oracle):
    """Clip 2's motion latents: clip 1's last two frames decoded, clamped and encoded again."""
    o, session = hallo_oracle, hallo_run["session"]
    last = torch.from_numpy(o["final_latents"][0]).transpose(0, 1)[-2:]
    with torch.no_grad():
        again = session.backend.vae_encode(session.backend.vae_decode(last))
    assert rel(again, o["reference_latents"][1, 1:]) <= TOLERANCE
    assert rel(hallo_run["latents"][0][0].transpose(0, 1)[-2:], o["final_latents"][0].transpose(1, 0, 2, 3)[-2:]) \
        <= TOLERANCE


def test_hallo_guidance_batch_branches(hallo_run, hallo_oracle):
    """Clip 2, step 1: the conditional and unconditional outputs of the guidance batch as Hallo builds it."""
    branches, o = hallo_run["branches0"][1], hallo_oracle
    assert rel(branches[Branch.UNCOND][0], o["branch_output_clip1"][0]) <= TOLERANCE
    assert rel(branches[Branch.FULL][0], o["branch_output_clip1"][1]) <= TOLERANCE


@pytest.mark.parametrize("clip", [0, 1])
def test_hallo_guided_step_and_final_latents(hallo_run, hallo_oracle, clip):
    """One step's guided output, and the clean latents after 4 DDIM steps, of both clips."""
    assert rel(hallo_run["guided0"][clip][0], hallo_oracle["guided_step0"][clip]) <= TOLERANCE
    assert rel(hallo_run["latents"][clip][0], hallo_oracle["final_latents"][clip]) <= TOLERANCE


def test_hallo_decoded_frames(hallo_run, hallo_oracle):
    """Hallo's decoded frames (stored in fp16) against the engine's VAE decode of its latents."""
    o, session = hallo_oracle, hallo_run["session"]
    latents = torch.cat(hallo_run["latents"], dim=2)[0].transpose(0, 1)
    for k, frame in enumerate(o["frame_index"]):
        with torch.no_grad():
            ours = (session.backend.vae_decode(latents[frame:frame + 1])[0] + 1) / 2
        assert np.abs(ours.numpy() - o["frames"][:, k].astype(np.float32)).max() <= 1e-3


def test_alternating_reference_follows_hallos_reader_indexing():
    """Rows labelled by (image, context) through Hallo's reader indexing, re-expressed with torch ops: the
    bank row each frame reads and the motion rows each branch reads are the ones AlternatingReference gives."""
    frames, n = 5, 2
    rows = torch.arange(2 * (n + 1))  # ReferenceNet batch: [ref, m1, m2] per branch; row i reads context i % 2
    by_branch = rows.view(2, n + 1)
    bank = by_branch[:, 0].view(1, 2).repeat(1, frames).view(-1)  # their [:, 0] then .repeat(1, F, 1, 1)
    motion = by_branch[:, 1:]
    alt = AlternatingReference(banks=([], []), motion=([torch.zeros(1, n, 1, 1, 1)], [torch.zeros(1, n, 1, 1, 1)]))
    for branch in (0, 1):
        for frame in range(frames):
            assert alt.reference_context(branch, frame, frames) == int(bank[branch * frames + frame]) % 2
        for j in range(n):
            assert alt.motion_context(branch, j, n) == int(motion[branch, j]) % 2


@pytest.fixture(scope="module")
def echomimic_oracle() -> dict[str, np.ndarray]:
    return dict(np.load(ECHOMIMIC_ORACLE))


@pytest.fixture(scope="module")
def echomimic_run(echomimic_model: Path, echomimic_oracle: dict[str, np.ndarray]) -> dict:
    """The engine's offline session on the EchoMimic oracle's inputs."""
    o = echomimic_oracle
    model = open_model(str(echomimic_model))
    backend = make_backend("torch", model, "cpu", torch.float32)
    session = Session(backend, model.config, o["portrait"], o["face_mask"],
                      GenerationOptions(steps=len(o["timesteps"]), offline=True))
    pcm = o["pcm16"].astype(np.float32) / 32768.0
    session.push_audio(pcm)
    ready_before_end = len(session.ready_clips())
    session.end()
    (clip,) = session.ready_clips()
    with torch.no_grad():
        cond = session.conditions(clip)
        noise, _ = session.noise(clip)
        guided = session.denoiser.model
        window = torch.tensor(context_windows(clip.frames, 12, 3, 0)[0])
        t0 = torch.full((1, window.numel()), float(o["timesteps"][0]))
        out = backend.backbone(BackboneInputs.at(noise[:, :, window].expand(2, -1, -1, -1, -1), t0.expand(2, -1),
                                                 guided.batched(window_conditions(cond, window))))
        every = torch.full((1, clip.frames), float(o["timesteps"][0]))
        guided0 = session.denoiser.windowed_output(noise, every, cond, context_windows(clip.frames, 12, 3, 0))
        ((done, latents),) = session.step(clip)
        frames = session.decode(done, latents)
    return dict(session=session, model=model, pcm=pcm, ready_before_end=ready_before_end, clip=clip, cond=cond,
                noise=noise, window=window, window_out=dict(zip(guided.branches, out.chunk(2))), guided0=guided0,
                latents=latents, frames=frames)


def test_echomimic_offline_session_is_one_video_of_its_frame_count(echomimic_run, echomimic_oracle):
    """EchoMimic denoises the whole video at once; its chunker makes 26 frames of 1.0 s at 24 fps."""
    assert echomimic_run["ready_before_end"] == 0
    assert (echomimic_run["clip"].start, echomimic_run["clip"].end) == (0, int(echomimic_oracle["video_frames"]))
    assert len(echomimic_run["frames"]) == 26 == echomimic_frame_count(16000, 24.0)


def test_echomimic_context_windows_are_its_schedule(echomimic_oracle):
    """Three windows of 12 over 26 frames, overlapping by 3, the last wrapping round; rotated 2 frames a step."""
    assert context_windows(26, 12, 3, 0) == [list(range(12)), list(range(9, 21)), [*range(18, 26), 0, 1, 2, 3]]
    assert [len(w) for w in context_windows(26, 12, 3, 0)] == echomimic_oracle["window_sizes"].tolist()
    assert context_windows(26, 12, 3, 1)[0] == list(range(2, 14))
    assert context_windows(10, 12, 3, 2) == [[4, 5, 6, 7, 8, 9, 0, 1, 2, 3]]


def test_echomimic_front_end_and_portrait_inputs(echomimic_run, echomimic_oracle):
    """Whisper states of the whole audio, per-frame tokens, reference latent, face features, clamped noise."""
    o, run, session = echomimic_oracle, echomimic_run, echomimic_run["session"]
    with torch.no_grad():
        levels = run["model"].audio_encoder.whisper_levels(torch.from_numpy(run["pcm"]))
    assert rel(levels, o["whisper_levels"]) <= TOLERANCE
    assert rel(run["cond"].audio_tokens[0], o["audio_tokens"]) <= TOLERANCE
    assert rel(session.reference_latent[0], o["reference_latent"]) <= TOLERANCE
    assert rel(session.face[0, 0], o["face_features"]) <= TOLERANCE
    assert rel(run["noise"][0, :, :1], np.clip(o["noise_frame0"], -1.5, 1.5)) == 0.0
    assert rel(run["noise"][0][:, run["window"]], o["window0_input"]) == 0.0


def test_echomimic_guidance_batch_of_a_window(echomimic_run, echomimic_oracle):
    """Step 1, first window: unconditional (zero audio, zero face features, no reference) and conditional."""
    out, o = echomimic_run["window_out"], echomimic_oracle
    assert rel(out[Branch.UNCOND][0], o["window0_output"][0]) <= TOLERANCE
    assert rel(out[Branch.FULL][0], o["window0_output"][1]) <= TOLERANCE


def test_echomimic_final_latents_and_frames(echomimic_run, echomimic_oracle):
    """Step 1's guided output (three windows averaged), the clean latents of the whole video after 4 steps,
    and two decoded frames."""
    o, run = echomimic_oracle, echomimic_run
    assert rel(run["guided0"][0], o["guided_step0"]) <= TOLERANCE
    assert rel(run["latents"][0], o["final_latents"]) <= TOLERANCE
    latents = run["latents"][0].transpose(0, 1)
    for k, frame in enumerate(o["frame_index"]):
        with torch.no_grad():
            ours = (run["session"].backend.vae_decode(latents[frame:frame + 1])[0] + 1) / 2
        assert np.abs(ours.numpy() - o["frames"][:, k].astype(np.float32)).max() <= 1e-3
