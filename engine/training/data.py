"""Training batches cut from cached synthetic clips, the way the streaming session cuts generation.

A video sample is ``F`` consecutive frames ``[s, s + F)`` of a clip with everything the session would
hand the backbone for that clip:

- audio: one encoder window over frames ``[s - m - L, s + F + m)`` clamped to the clip (``L`` frames of
  left context, ``m`` of look-ahead), exactly :class:`engine.stream.audio_features.StreamingAudioFeatures`'s
  window; the clip's tokens are rows ``s - first .. s + F - first`` of its output;
- motion frames: the ``n`` frames before ``s`` (they go through the ReferenceNet); before the start of
  the clip the session's ``motion_init`` stands in: the reference image (``"reference"``) or zero
  features (``"zeros"``, marked invalid);
- the face-region mask: the union of the clip's face boxes grown by the session's 10 % margin (jittered a
  little, since at inference the box comes from a detector);
- the head's rotation speed per frame; the reference: the person at rest or a random frame of the clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.config import ModelConfig
from engine.faces import FaceBox, box_mask
from engine.synthetic.clips import TalkingClip
from engine.timebase import SAMPLE_RATE, frame_start

MASK_MARGIN = 0.1
"""Face box growth of the face-locator mask (``engine.faces.prepare_portrait``'s ``mask_margin``)."""


def audio_window(start: int, end: int, total_frames: int, lookahead: int, left_context: int) -> tuple[int, int]:
    """Frames ``[first, last)`` of the audio-encoder window of clip frames ``[start, end)`` (the session's)."""
    return max(0, start - lookahead - left_context), min(end + lookahead, total_frames)


def window_pcm(audio: np.ndarray, first: int, last: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 PCM of frames ``[first, last)``, zero-padded past the end of ``audio``."""
    a, b = frame_start(first, fps, sample_rate), frame_start(last, fps, sample_rate)
    out = audio[a:b]
    return np.pad(out, (0, b - a - out.shape[0])).astype(np.float32)


def face_mask(boxes: np.ndarray, size: int, margin: float = MASK_MARGIN,
              jitter: np.ndarray | None = None) -> np.ndarray:
    """float32 [size, size]: 1 inside the union of ``boxes`` ([K, 4] pixels) grown by ``margin``.

    ``jitter`` ([4], fractions of the box size) moves the union box's sides outwards (positive) or inwards.
    """
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    box = FaceBox(float(x0), float(y0), float(x1), float(y1)).grow(margin)
    if jitter is not None:
        w, h = box.width, box.height
        box = FaceBox(box.x0 - jitter[0] * w, box.y0 - jitter[1] * h, box.x1 + jitter[2] * w, box.y1 + jitter[3] * h)
    return box_mask(box, size)


def mouth_cells(mouth_box: np.ndarray, size: int, grid: int) -> np.ndarray:
    """float32 [grid, grid]: 1 on the latent cells whose centre lies in the mouth box (pixels of a
    ``size`` image) grown by 15 %."""
    return box_mask(FaceBox(*(mouth_box * grid / size).tolist()).grow(0.15), grid)


def region_weights(face_box: np.ndarray, mouth_box: np.ndarray, size: int, grid: int, face_weight: float,
                   mouth_weight: float) -> np.ndarray:
    """float32 [grid, grid] loss weights at latent resolution: 1 + ``face_weight`` on the face box
    + ``mouth_weight`` on the mouth cells (:func:`mouth_cells`)."""
    weights = np.ones((grid, grid), np.float32)
    weights += face_weight * box_mask(FaceBox(*(face_box * grid / size).tolist()), grid)
    return weights + mouth_weight * mouth_cells(mouth_box, size, grid)


def to_images(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return t.movedim(-1, -3)


@dataclass
class AudioWindow:
    """One encoder call: ``pcm`` float32 [samples] covering ``frames`` frames; the clip's tokens are rows
    ``offset .. offset + clip_frames`` of the output."""

    pcm: torch.Tensor
    frames: int
    offset: int


@dataclass
class Batch:
    """B samples of F frames (images in [-1, 1]).

    Attributes:
        frames: [B, 3, F, H, W] targets.
        reference: [B, 3, H, W].
        motion: [B, n, 3, H, W] motion frames, or None (image batches); motion_valid: [B, n] bool
            (False: zero features, the ``motion_init = "zeros"`` stand-in before the clip's start).
        audio: one :class:`AudioWindow` per sample (video batches) or None.
        mask: [B, 1, H, W] face-region mask.
        speed: [B, F] head rotation speed (rad/s).
        weights: [B, 1, 1, h, w] loss weights at latent resolution; mouth: [B, 1, 1, h, w] 1 on mouth cells.
        opening, width: [B, F] ground-truth mouth shape.
        history: the segments of ``n`` frames just before the samples, oldest first (each a Batch of the
            same samples with its own motion frames and audio; the motion frames of all but the oldest are
            the segment before it); empty unless asked for (:meth:`ClipSampler.video_batch`).
    """

    frames: torch.Tensor
    reference: torch.Tensor
    motion: torch.Tensor | None
    motion_valid: torch.Tensor | None
    audio: list[AudioWindow] | None
    mask: torch.Tensor
    speed: torch.Tensor
    weights: torch.Tensor
    mouth: torch.Tensor
    opening: torch.Tensor
    width: torch.Tensor
    history: list[Batch] = field(default_factory=list)


class ClipSampler:
    """Draws batches from clips with its own seeded random stream (its state is part of a checkpoint).

    ``left_context_s``: the session's ``audio_context_s`` (1 s). ``face_weight`` / ``mouth_weight``:
    extra loss weight on the face and the mouth (Hallo weighs face and lip regions the same way).
    """

    def __init__(self, clips: list[TalkingClip], config: ModelConfig, seed: int = 0, left_context_s: float = 1.0,
                 face_weight: float = 1.0, mouth_weight: float = 8.0, reference_rest_prob: float = 0.5,
                 mask_jitter: float = 0.06):
        if not clips:
            raise ValueError("no clips to sample from")
        self.clips, self.config = clips, config
        self.rng = np.random.default_rng(seed)
        self.left_context = round(left_context_s * config.fps)
        self.lookahead = config.audio.window
        self.face_weight, self.mouth_weight = face_weight, mouth_weight
        self.reference_rest_prob, self.mask_jitter = reference_rest_prob, mask_jitter
        self.grid = config.resolution // config.latent_downscale
        self.size = clips[0].frames.shape[1]
        self.moving = [i for i, c in enumerate(clips) if float(c.head_speed.max()) > 0]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _reference(self, clip: TalkingClip) -> np.ndarray:
        if self.rng.uniform() < self.reference_rest_prob:
            return clip.reference
        return clip.frames[self.rng.integers(clip.num_frames)]

    def _common(self, clip: TalkingClip, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        jitter = self.rng.uniform(-self.mask_jitter, self.mask_jitter, 4)
        mask = face_mask(clip.face_boxes[index], clip.frames.shape[1], jitter=jitter)
        boxes = clip.face_boxes[index]
        union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
        weights = region_weights(union, clip.mouth_box, clip.frames.shape[1], self.grid, self.face_weight,
                                 self.mouth_weight)
        return mask, weights

    def _pack(self, items: list[dict], with_motion: bool, with_audio: bool) -> Batch:
        frames = torch.stack([to_images(it["frames"]) for it in items]).transpose(1, 2)
        motion = torch.stack([to_images(it["motion"]) for it in items]) if with_motion else None
        valid = torch.from_numpy(np.stack([it["valid"] for it in items])) if with_motion else None
        return Batch(
            frames=frames, reference=torch.stack([to_images(it["reference"]) for it in items]),
            motion=motion, motion_valid=valid, audio=[it["audio"] for it in items] if with_audio else None,
            mask=torch.from_numpy(np.stack([it["mask"] for it in items]))[:, None],
            speed=torch.from_numpy(np.stack([it["speed"] for it in items])).float(),
            weights=torch.from_numpy(np.stack([it["weights"] for it in items]))[:, None, None],
            mouth=torch.from_numpy(np.stack([mouth_cells(it["mouth_box"], self.size, self.grid)
                                             for it in items]))[:, None, None],
            opening=torch.from_numpy(np.stack([it["opening"] for it in items])).float(),
            width=torch.from_numpy(np.stack([it["width"] for it in items])).float())

    def image_batch(self, clips: int, frames: int) -> Batch:
        """``clips`` samples of ``frames`` independent random frames of one clip each (no motion, no audio)."""
        items = []
        for _ in range(clips):
            clip = self.clips[self.rng.integers(len(self.clips))]
            index = np.sort(self.rng.choice(clip.num_frames, size=frames, replace=clip.num_frames < frames))
            mask, weights = self._common(clip, index)
            items.append(dict(frames=clip.frames[index], reference=self._reference(clip), mask=mask, weights=weights,
                              mouth_box=clip.mouth_box,
                              speed=clip.head_speed[index], opening=clip.opening[index], width=clip.width[index]))
        return self._pack(items, with_motion=False, with_audio=False)

    def video_batch(self, clips: int, frames: int, first_clip_prob: float = 0.2, moving_prob: float | None = None,
                    history: int = 0) -> Batch:
        """``clips`` samples of ``frames`` consecutive frames with motion frames and their audio window.

        ``first_clip_prob``: how often a sample starts at frame 0 (the session's first clip, no motion
        frames). ``moving_prob``: how often the clip has a moving head (None: as the data has it).
        ``history``: also cut the ``history`` segments of ``motion_frames`` frames just before each sample
        (:attr:`Batch.history`, oldest first), whose frames a rollout generates in place of the ground-truth
        motion frames; every sample then starts at ``history * motion_frames`` or later (never at frame 0).
        """
        n = self.config.motion_frames
        if history and n == 0:
            raise ValueError("a model without motion frames has no history to roll out")
        items = []
        for _ in range(clips):
            if moving_prob is not None and self.moving and self.rng.uniform() < moving_prob:
                clip = self.clips[self.moving[self.rng.integers(len(self.moving))]]
            else:
                clip = self.clips[self.rng.integers(len(self.clips))]
            total = clip.num_frames
            earliest = history * n
            if total < frames + earliest:
                raise ValueError(f"clip {clip.recipe.seed} has {total} frames, fewer than {frames + earliest}")
            if not history and self.rng.uniform() < first_clip_prob:
                start = 0
            else:
                start = int(self.rng.integers(earliest, total - frames + 1))
            reference = self._reference(clip)
            mask, weights = self._common(clip, np.arange(start, start + frames))
            items.append(self._video_item(clip, start, frames, reference, mask, weights))
            items[-1]["history"] = [self._video_item(clip, start - k * n, n, reference, mask, weights)
                                    for k in range(history, 0, -1)]
        batch = self._pack(items, with_motion=True, with_audio=True)
        batch.history = [self._pack([it["history"][k] for it in items], with_motion=True, with_audio=True)
                         for k in range(history)]
        return batch

    def _video_item(self, clip: TalkingClip, start: int, frames: int, reference: np.ndarray, mask: np.ndarray,
                    weights: np.ndarray) -> dict:
        """Frames ``[start, start + frames)`` of ``clip`` with their motion frames and audio window, as the
        session cuts them (one sample of :meth:`video_batch`)."""
        n = self.config.motion_frames
        index = np.arange(start, start + frames)
        motion_index = np.arange(start - n, start)
        motion = clip.frames[np.maximum(motion_index, 0)].copy()
        before = motion_index < 0
        motion[before] = reference
        valid = ~before if self.config.motion_init == "zeros" else np.ones(n, bool)
        first, last = audio_window(start, start + frames, clip.num_frames, self.lookahead, self.left_context)
        pcm = window_pcm(clip.audio, first, last, clip.fps)
        return dict(frames=clip.frames[index], reference=reference, motion=motion, valid=valid,
                    mouth_box=clip.mouth_box, audio=AudioWindow(torch.from_numpy(pcm), last - first, start - first),
                    mask=mask, weights=weights, speed=clip.head_speed[index], opening=clip.opening[index],
                    width=clip.width[index])
