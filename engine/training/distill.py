"""Few-step distillation: a student backbone that the engine's LCM sampler runs in 4, 2 or 1 steps, with
the teacher's audio guidance baked in (no classifier-free guidance at inference).

The engine's :class:`engine.sampling.samplers.LCMSampler` calls the model at 999, 759, 499, 259 (4 steps;
2 steps use 999 and 499, 1 step 999) and takes ``c_skip(t) x_t + c_out(t) x0(x_t, t)`` as the clean
sample. The student learns that consistency function on exactly those points, phase by phase
(multistep / phased consistency distillation, after LCM arXiv 2310.04378 and PCM arXiv 2405.18407):

- draw a clean clip, a phase ``k`` and noise; ``x_t`` at ``t = grid[k]``;
- the frozen teacher solves the probability-flow ODE from ``t`` to ``t' = grid[k + 1]`` with DDIM sub-steps,
  each one guided: ``v = v(no audio) + w (v(audio) - v(no audio))`` (both branches in one batch);
- the target is the EMA student's consistency function at ``(x_t', t')`` (at the last phase, ``t' = -1``,
  it is the teacher's clean sample itself);
- the student's consistency function at ``(x_t, t)`` regresses it (region-weighted MSE);
- a temporal term (weight ``temporal``) asks the student's frame-to-frame change to be the clean clip's:
  region-weighted MSE between the frame differences of the prediction and of ``x0``, on the batches whose
  frames share one phase. Without it the few-step student flickers about twice as much as the 40-step teacher.
  The first difference is taken across the seam, from the last motion frame: the prediction's first frame
  minus the motion latent it was conditioned on against the clean first frame minus the ground-truth frame
  before it, so a clip continues from its motion frames, its own rollouts included, without a jump;
- motion-frame augmentation (``augment``, :mod:`engine.training.motion`): in a share of the batches the
  motion frames are the student's own (LCM rollouts of the segments before the clip), so that it learns to
  continue from its own frames as a stream makes it; teacher, target and student see the same ones.

Only the backbone is distilled: ReferenceNet, audio encoder, face locator and speed encoder are shared with
the teacher, so the student's conditions are the teacher's.
"""

from __future__ import annotations

import copy

import torch

from engine.models.model import EmoteModel
from engine.sampling.samplers import LCMSampler
from engine.sampling.schedules import NoiseSchedule, expand_as_latents, x0_eps_from_output
from engine.training.data import ClipSampler
from engine.training.diffusion import LossOptions, backbone_conditions, encode, motion_latents
from engine.training.motion import MotionAugment
from engine.training.recipe import StageBudget
from engine.training.rollout import Rollout
from engine.training.stages import Stage


def phase_grid(sampler: LCMSampler, steps: int = 4) -> torch.Tensor:
    """LongTensor [steps + 1]: the sampler's timesteps for ``steps`` steps, then -1 (clean)."""
    return torch.cat([sampler.timesteps(steps), torch.tensor([-1])])


def consistency(sampler: LCMSampler, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor
                ) -> torch.Tensor:
    """The LCM sampler's denoised estimate ``c_skip(t) x_t + c_out(t) x0`` for timesteps ``t`` [B, F]."""
    alpha = expand_as_latents(sampler.schedule.alpha_cumprod_at(t), sample).to(sample.dtype)
    x0, _ = x0_eps_from_output(model_output, sample, alpha, sampler.schedule.prediction_type)
    c_skip, c_out = sampler.boundary_scalings(t)
    return (expand_as_latents(c_skip, sample).to(sample.dtype) * sample
            + expand_as_latents(c_out, sample).to(sample.dtype) * x0)


def ddim_step(schedule: NoiseSchedule, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor,
              t_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from ``t`` to ``t_prev`` ([B, F] each; ``t_prev = -1``: the clean sample)."""
    alpha = expand_as_latents(schedule.alpha_cumprod_at(t), sample).to(sample.dtype)
    alpha_prev = expand_as_latents(schedule.alpha_cumprod_at(t_prev), sample).to(sample.dtype)
    x0, eps = x0_eps_from_output(model_output, sample, alpha, schedule.prediction_type)
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def temporal_error(prediction: torch.Tensor, clean: torch.Tensor, prediction_before: torch.Tensor,
                   clean_before: torch.Tensor) -> torch.Tensor:
    """[B, 1, F, h, w]: squared error between the frame differences of ``prediction`` and ``clean`` (latents
    [B, C, F, h, w]), averaged over channels; the first difference is from the frame before each
    (``prediction_before`` / ``clean_before``, [B, C, h, w]: the motion latent and the true frame)."""
    change = (torch.cat([prediction_before[:, :, None], prediction], dim=2).diff(dim=2)
              - torch.cat([clean_before[:, :, None], clean], dim=2).diff(dim=2))
    return change.pow(2).mean(dim=1, keepdim=True)


def with_silent_branch(cond: dict) -> dict:
    """Backbone conditions for a doubled batch: the samples as given, then the same without audio."""
    out = {}
    for key, value in cond.items():
        if key == "audio_tokens":
            out[key] = torch.cat([value, torch.zeros_like(value)])
        elif isinstance(value, list):
            out[key] = [torch.cat([v, v]) for v in value]
        else:
            out[key] = None if value is None else torch.cat([value, value])
    return out


class Distiller:
    """Holds the frozen teacher backbone and the EMA target, and computes the distillation loss.

    ``model`` is the student: its backbone starts as a copy of the teacher's and is the only part that
    trains. ``guidance``: the audio guidance scale baked in; ``substeps``: DDIM steps of the teacher per
    phase; ``ema``: decay of the target network; ``temporal``: weight of the frame-difference term;
    ``augment``: what is done to the motion frames (its rollouts run the student in ``augment.steps`` LCM steps).
    """

    def __init__(self, model: EmoteModel, schedule: NoiseSchedule, guidance: float = 2.0, substeps: int = 2,
                 ema: float = 0.9, steps: int = 4, temporal: float = 0.0, augment: MotionAugment = MotionAugment()):
        self.model, self.schedule = model, schedule
        self.teacher = copy.deepcopy(model.backbone).requires_grad_(False)
        self.target = copy.deepcopy(model.backbone).requires_grad_(False)
        self.sampler = LCMSampler(schedule)
        self.grid = phase_grid(self.sampler, steps)
        self.guidance, self.substeps, self.ema, self.temporal = guidance, substeps, ema, temporal
        self.augment = augment
        self.rollout = Rollout(model.backbone, self.sampler, augment.steps)

    def _teacher_solve(self, x: torch.Tensor, t: torch.Tensor, t_end: torch.Tensor, cond: dict) -> torch.Tensor:
        """Guided DDIM from ``t`` to ``t_end`` ([B, F]) in ``substeps`` equal sub-steps."""
        b = x.shape[0]
        both = with_silent_branch(cond)
        for i in range(self.substeps):
            start = t + ((t_end - t) * i) // self.substeps
            stop = t + ((t_end - t) * (i + 1)) // self.substeps
            out = self.teacher(torch.cat([x, x]), torch.cat([start, start]), **both)
            full, no_audio = out[:b], out[b:]
            x = ddim_step(self.schedule, no_audio + self.guidance * (full - no_audio), x, start, stop)
        return x

    def loss(self, sampler: ClipSampler, budget: StageBudget, generator: torch.Generator,
             per_frame_prob: float = 0.3) -> tuple[torch.Tensor, dict[str, float]]:
        """One distillation loss on a fresh batch (see the module docstring)."""
        rolled = self.augment.rolls_out(generator)
        batch = sampler.video_batch(budget.clips, budget.frames, history=self.augment.segments if rolled else 0)
        b, _, frames = batch.frames.shape[:3]
        options = LossOptions(audio=True, motion=True, speed=True, reference_grad=False, augment=self.augment)
        with torch.no_grad():
            true_motion = motion_latents(self.model, batch)
            motion = self.rollout.motion(self.model, batch, options, generator) if rolled else true_motion
            cond = backbone_conditions(self.model, batch, options, generator, audio_drop_prob=0.0, motion=motion)
            x0 = encode(self.model, batch.frames.transpose(1, 2).flatten(0, 1))
            x0 = x0.view(b, frames, *x0.shape[1:]).transpose(1, 2)
            phases = len(self.grid) - 1
            per_frame = float(torch.rand((), generator=generator)) < per_frame_prob
            if per_frame:
                k = torch.randint(0, phases, (b, frames), generator=generator)
            else:
                k = torch.randint(0, phases, (b, 1), generator=generator).expand(b, frames)
            t, t_next = self.grid[k], self.grid[k + 1]
            x_t = self.schedule.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
            x_next = self._teacher_solve(x_t, t, t_next, cond)
            target_out = self.target(x_next, t_next.clamp(min=0), **cond)
            target = torch.where(expand_as_latents(t_next < 0, x_next), x_next,
                                 consistency(self.sampler, target_out, x_next, t_next.clamp(min=0)))
        prediction = consistency(self.sampler, self.model.backbone(x_t, t, **cond), x_t, t)
        error = (prediction - target).pow(2).mean(dim=1, keepdim=True)
        value = (error * batch.weights).mean() / batch.weights.mean()
        metrics = {"loss": float(value.detach())}
        if self.temporal > 0 and not per_frame:
            change = temporal_error(prediction, x0, motion[:, -1], true_motion[:, -1])
            valid = batch.motion_valid[:, -1].to(change.dtype).view(b, 1, 1, 1, 1)
            seam = torch.cat([valid.expand_as(change[:, :, :1]), torch.ones_like(change[:, :, 1:])], dim=2)
            weights = batch.weights * seam
            value = value + self.temporal * (change * weights).mean() / weights.mean()
            metrics["loss_temporal"] = float(change.detach().mean())
        return value, metrics

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA of the student's backbone into the target."""
        for target, student in zip(self.target.parameters(), self.model.backbone.parameters()):
            target.lerp_(student, 1.0 - self.ema)


def distill_stage(model: EmoteModel, sampler: ClipSampler, schedule: NoiseSchedule, budget: StageBudget,
                  seed: int, guidance: float, temporal: float = 0.0, augment: MotionAugment = MotionAugment()
                  ) -> tuple[Stage, Distiller]:
    """The distillation as a :class:`Stage` (the backbone trains; the EMA target follows every step)."""
    distiller = Distiller(model, schedule, guidance=guidance, temporal=temporal, augment=augment)
    generator = torch.Generator().manual_seed(seed)

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        distiller.update_target()
        return distiller.loss(sampler, budget, generator)

    stage = Stage("distill", budget, [(list(model.backbone.parameters()), 1.0)], loss, sampler, generator,
                  extra={"teacher": distiller.teacher, "target": distiller.target})
    return stage, distiller
