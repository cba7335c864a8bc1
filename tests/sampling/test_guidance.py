"""Two-scale classifier-free guidance: which branches run and how they combine."""

from __future__ import annotations

import pytest
import torch

from engine.options import GenerationOptions
from engine.sampling import Branch, GuidanceScales, branches_needed, combine, split_batched

FULL, REF, UNCOND = Branch.FULL, Branch.REF_ONLY, Branch.UNCOND


@pytest.mark.parametrize(
    ("reference", "audio", "expected"),
    [
        (1.0, 1.0, (FULL,)),
        (1.0, 3.5, (FULL, REF)),
        (2.0, 1.0, (FULL, REF, UNCOND)),
        (2.5, 2.5, (FULL, UNCOND)),
        (3.5, 2.0, (FULL, REF, UNCOND)),
        (1.0, 0.0, (REF,)),
        (0.0, 0.0, (UNCOND,)),
        (2.0, 0.0, (REF, UNCOND)),
    ],
)
def test_branches_needed(reference: float, audio: float, expected: tuple[Branch, ...]) -> None:
    assert branches_needed(GuidanceScales(reference=reference, audio=audio)) == expected


def test_scales_of_options_read_each_condition_from_its_own_field() -> None:
    assert GuidanceScales.of(GenerationOptions(cfg_ref=1.0, cfg_audio=3.5)) == GuidanceScales(reference=1.0, audio=3.5)
    assert branches_needed(GuidanceScales.of(GenerationOptions(cfg_ref=2.0, cfg_audio=1.0))) == (FULL, REF, UNCOND)


def test_branch_conditions() -> None:
    assert (FULL.uses_reference, FULL.uses_audio) == (True, True)
    assert (REF.uses_reference, REF.uses_audio) == (True, False)
    assert (UNCOND.uses_reference, UNCOND.uses_audio) == (False, False)


def branch_outputs() -> dict[Branch, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {branch: torch.randn(2, 4, 3, 5, 5, generator=generator) for branch in Branch}


@pytest.mark.parametrize(("reference", "audio"), [(1.0, 1.0), (1.0, 3.5), (2.0, 1.0), (2.5, 2.5), (3.5, 2.0)])
def test_combine_is_the_documented_formula(reference: float, audio: float) -> None:
    outputs = branch_outputs()
    scales = GuidanceScales(reference=reference, audio=audio)
    expected = outputs[UNCOND] + reference * (outputs[REF] - outputs[UNCOND]) + audio * (outputs[FULL] - outputs[REF])
    needed_only = {branch: outputs[branch] for branch in branches_needed(scales)}
    torch.testing.assert_close(combine(needed_only, scales), expected, atol=1e-5, rtol=1e-5)


def test_no_guidance_returns_the_full_branch_itself() -> None:
    outputs = branch_outputs()
    assert combine({FULL: outputs[FULL]}, GuidanceScales()) is outputs[FULL]


def test_combine_names_missing_branches() -> None:
    outputs = branch_outputs()
    with pytest.raises(ValueError, match="uncond"):
        combine({FULL: outputs[FULL], REF: outputs[REF]}, GuidanceScales(reference=2.0, audio=3.0))


def test_split_batched_follows_branch_order() -> None:
    outputs = branch_outputs()
    order = (FULL, REF, UNCOND)
    split = split_batched(torch.cat([outputs[branch] for branch in order]), order)
    for branch in order:
        torch.testing.assert_close(split[branch], outputs[branch], atol=0, rtol=0)
    with pytest.raises(ValueError, match="multiple"):
        split_batched(torch.zeros(5, 4), order)


def test_non_finite_scales_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite"):
        GuidanceScales(reference=float("nan"))
