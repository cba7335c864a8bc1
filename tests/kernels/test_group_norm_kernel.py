"""GroupNorm (+ SiLU): the Triton kernel against torch.nn.functional.group_norm."""

import pytest
import torch
import torch.nn.functional as F

from emote_kernels import group_norm as gn

requires_triton = pytest.mark.skipif(gn.triton is None, reason="triton is not installed")

TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def make_inputs(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, affine: bool, offset: float = 0.0,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset
    if not affine:
        return x.to(device=device, dtype=dtype), None, None
    weight = 1.0 + 0.5 * torch.randn(shape[1], generator=generator, dtype=torch.float64)
    bias = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (x, weight, bias))


def fp32_reference(x, groups, weight, bias, silu):
    """The reference computed in fp32 from the same (possibly half) inputs, rounded once to x's dtype."""
    as_fp32 = [t.float() if t is not None else None for t in (x, weight, bias)]
    return gn.group_norm_reference(as_fp32[0], groups, as_fp32[1], as_fp32[2], 1e-5, silu).to(x.dtype)


def test_reference_is_functional_group_norm_then_silu():
    x, weight, bias = make_inputs((2, 64, 3, 5), torch.float32, torch.device("cpu"), affine=True)
    expected = F.silu(F.group_norm(x, 32, weight, bias))
    torch.testing.assert_close(gn.group_norm_reference(x, 32, weight, bias, silu=True), expected)
    torch.testing.assert_close(gn.group_norm_reference(x, 32, weight, bias), F.group_norm(x, 32, weight, bias))


@requires_triton
@pytest.mark.parametrize(
    "shape, groups, dtype, silu, affine",
    [
        ((2, 64, 3, 5), 32, torch.float32, False, True),
        ((2, 64, 3, 5), 8, torch.float32, True, True),
        ((2, 64, 5, 3), 32, torch.float16, True, True),
        ((2, 32, 3, 5), 8, torch.float16, False, True),
        ((2, 32, 4, 3, 5), 8, torch.float32, True, False),
        ((3, 64), 32, torch.float32, True, True),
        ((2, 64, 3, 5), 32, torch.bfloat16, True, True),
    ],
)
def test_triton_matches_reference(shape, groups, dtype, silu, affine, device):
    x, weight, bias = make_inputs(shape, dtype, device, affine)
    out = gn.group_norm_triton(x, groups, weight, bias, 1e-5, silu)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, fp32_reference(x, groups, weight, bias, silu), **TOLERANCE[dtype])


@requires_triton
def test_triton_loops_over_groups_larger_than_a_block(device):
    """16 channels x 40 x 40 per group: 25,600 elements, 13 loop steps of the largest block."""
    x, weight, bias = make_inputs((1, 64, 40, 40), torch.float32, device, affine=True)
    assert gn.group_norm_config(16 * 40 * 40)[0] < 16 * 40 * 40
    out = gn.group_norm_triton(x, 4, weight, bias, 1e-5, True)
    torch.testing.assert_close(out, fp32_reference(x, 4, weight, bias, True), **TOLERANCE[torch.float32])


@requires_triton
def test_triton_variance_survives_a_large_mean(device):
    """Mean 1000 and spread 0.01: E[x^2] - mean^2 in fp32 would lose every digit of the variance."""
    x, weight, bias = make_inputs((2, 64, 3, 5), torch.float32, device, affine=True, offset=1000.0, scale=0.01)
    expected = gn.group_norm_reference(x.double(), 32, weight.double(), bias.double(), 1e-5).float()
    torch.testing.assert_close(gn.group_norm_triton(x, 32, weight, bias), expected, atol=2e-3, rtol=2e-3)


@requires_triton
def test_triton_takes_non_contiguous_input(device):
    x, weight, bias = make_inputs((2, 64, 5, 3), torch.float32, device, affine=True)
    x = x.transpose(2, 3)
    torch.testing.assert_close(gn.group_norm_triton(x, 32, weight, bias), F.group_norm(x, 32, weight, bias),
                               atol=1e-5, rtol=1e-5)


def test_rejects_bad_shapes():
    x = torch.zeros(2, 48, 3, 5)
    with pytest.raises(ValueError, match="num_groups"):
        gn.group_norm_reference(x, 32)
    with pytest.raises(ValueError, match="weight"):
        gn.group_norm_reference(x, 16, torch.ones(32))
