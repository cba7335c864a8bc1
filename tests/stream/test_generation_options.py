"""Generation options left unset come from the model's sampling defaults, then from the engine's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.backends import make_backend
from engine.config import SamplingDefaults
from engine.options import ENGINE_DEFAULTS, GenerationOptions
from engine.stream.session import Session


def test_unset_options_take_the_models_defaults_then_the_engines():
    student = SamplingDefaults(steps=2, sampler="lcm", cfg_audio=1.0, cfg_ref=None)
    resolved = GenerationOptions(seed=5).with_model_defaults(student)
    assert (resolved.steps, resolved.sampler, resolved.cfg_audio) == (2, "lcm", 1.0)
    assert resolved.cfg_ref == ENGINE_DEFAULTS["cfg_ref"] and resolved.seed == 5
    chosen = GenerationOptions(steps=8, sampler="ddim", cfg_audio=2.5).with_model_defaults(student)
    assert (chosen.steps, chosen.sampler, chosen.cfg_audio) == (8, "ddim", 2.5)
    plain = GenerationOptions().with_model_defaults(SamplingDefaults())
    assert {k: getattr(plain, k) for k in ENGINE_DEFAULTS} == ENGINE_DEFAULTS


def test_out_of_range_steps_are_refused_but_unset_is_not():
    assert GenerationOptions().steps is None
    with pytest.raises(ValueError, match="steps"):
        GenerationOptions(steps=0)


def test_a_session_runs_with_the_models_defaults(model, portrait):
    image, mask = portrait
    config = dataclasses.replace(model.config, sampling=SamplingDefaults(steps=3, sampler="euler"))
    session = Session(make_backend("torch", model, "cpu"), config, image, mask, GenerationOptions())
    assert (session.options.steps, session.options.sampler) == (3, "euler")
    assert session.denoiser.steps == 3 and type(session.denoiser.sampler).__name__.lower().startswith("euler")
    session.push_audio(np.zeros(16000 // 5, np.float32))
    session.end()
    assert len(list(session.frames())) == 5
