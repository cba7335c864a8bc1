"""Reference attention: the reference against attention written out per frame, the Triton kernel against the
reference."""

import math

import pytest
import torch

from emote_kernels import reference_attention as ra

requires_triton = pytest.mark.skipif(ra.triton is None, reason="triton is not installed")

TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def make_inputs(batch: int, frames: int, length: int, bank_length: int, heads: int, head_dim: int,
                dtype: torch.dtype, device: torch.device, layout: str = "contiguous", seed: int = 0):
    """q, k, v ``[(b*f), L, heads*head_dim]`` and bank K/V ``[b, R, heads*head_dim]``.

    ``layout``: ``contiguous``; ``fused`` (q, k, v strided chunks of one QKV projection, the bank's K and V
    chunks of one KV projection); ``mixed`` (k a view with channel stride 2, the bank's V token-major
    transposed from a ``[R, b, C]`` tensor).
    """
    generator = torch.Generator().manual_seed(seed)
    rows, channels = batch * frames, heads * head_dim

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    if layout == "fused":
        return (*randn(rows, length, 3 * channels).chunk(3, dim=-1),
                *randn(batch, bank_length, 2 * channels).chunk(2, dim=-1))
    if layout == "mixed":
        k = randn(rows, length, 2 * channels)[..., ::2]
        bank_v = randn(bank_length, batch, channels).transpose(0, 1)
        return (randn(rows, length, channels), k, randn(rows, length, channels), randn(batch, bank_length, channels),
                bank_v)
    return (randn(rows, length, channels), randn(rows, length, channels), randn(rows, length, channels),
            randn(batch, bank_length, channels), randn(batch, bank_length, channels))


def attention_per_frame(q, k, v, bank_k, bank_v, keep, heads):
    """The definition, one frame row and head at a time: softmax over the row's own keys, then its sample's bank's
    keys if the sample keeps its bank."""
    rows, length, channels = q.shape
    frames, head_dim = rows // bank_k.shape[0], channels // heads
    out = torch.empty_like(q)
    for row in range(rows):
        sample = row // frames
        keys, values = k[row], v[row]
        if keep is None or keep[sample]:
            keys, values = torch.cat([keys, bank_k[sample]]), torch.cat([values, bank_v[sample]])
        for head in range(heads):
            dims = slice(head * head_dim, (head + 1) * head_dim)
            scores = q[row, :, dims] @ keys[:, dims].T / math.sqrt(head_dim)
            out[row, :, dims] = scores.softmax(dim=-1) @ values[:, dims]
    return out


@pytest.mark.parametrize("keep", [None, [True, False], [False, False]])
@pytest.mark.parametrize("frames, length, bank_length, heads, head_dim", [(3, 15, 15, 2, 40), (2, 6, 35, 1, 160)])
def test_reference_matches_attention_per_frame(keep, frames, length, bank_length, heads, head_dim):
    inputs = make_inputs(2, frames, length, bank_length, heads, head_dim, torch.float64, torch.device("cpu"))
    keep = None if keep is None else torch.tensor(keep)
    torch.testing.assert_close(ra.reference_attention_reference(*inputs, keep, heads),
                               attention_per_frame(*inputs, keep, heads), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    "frames, height, width, bank_length, head_dim, heads, dtype, layout, keep",
    [
        (3, 3, 5, 15, 40, 2, torch.float32, "contiguous", [True, False]),
        (2, 5, 7, 70, 80, 1, torch.float32, "fused", None),
        (1, 2, 9, 13, 160, 2, torch.float32, "mixed", [False, True]),
        (4, 3, 5, 28, 160, 1, torch.float16, "fused", [True, True]),
        (2, 9, 2, 17, 40, 8, torch.float16, "contiguous", None),
        (3, 5, 3, 15, 80, 2, torch.float16, "mixed", [True, False]),
        (2, 3, 6, 18, 80, 2, torch.bfloat16, "contiguous", [False, True]),
    ],
)
@requires_triton
def test_triton_matches_reference(frames, height, width, bank_length, head_dim, heads, dtype, layout, keep, device):
    """Token counts from non-square latents; banks longer, shorter and as long as the frame's own tokens."""
    inputs = make_inputs(2, frames, height * width, bank_length, heads, head_dim, dtype, device, layout)
    keep = None if keep is None else torch.tensor(keep)
    out = ra.reference_attention_triton(*inputs, keep, heads)
    expected = ra.reference_attention_reference(*(t.float() for t in inputs), keep, heads).to(dtype)
    assert out.shape == inputs[0].shape and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@requires_triton
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_triton_at_key_block_boundaries(offset, device):
    """Own and bank lengths one short of, equal to and one past the key block, where the loop switches tensor."""
    _, block_n, _, _ = ra.attention_config(40, torch.float32)
    inputs = make_inputs(1, 2, block_n + offset, block_n - offset, 1, 40, torch.float32, device, seed=offset + 5)
    torch.testing.assert_close(ra.reference_attention_triton(*inputs, None, 1),
                               ra.reference_attention_reference(*inputs, None, 1), **TOLERANCE[torch.float32])


@requires_triton
def test_triton_without_the_bank_is_self_attention(device):
    """A sample that drops its bank attends to its own tokens only: with a single own token the output is v."""
    q, k, v, bank_k, bank_v = make_inputs(2, 3, 1, 20, 2, 40, torch.float32, device)
    out = ra.reference_attention_triton(q, k, v, bank_k, bank_v, torch.tensor([False, True]), 2)
    torch.testing.assert_close(out[:3], v[:3], atol=1e-6, rtol=1e-6)
    assert (out[3:] - v[3:]).abs().max() > 0.1


def test_grid_keeps_big_dimension_off_the_limited_axes():
    rows, length, heads, block_m = 2 * 16, 64 * 64, 8, 64
    grid = ra.attention_grid(rows, length, heads, block_m)
    assert grid[0] == rows * length // block_m
    assert max(grid[1:]) <= 65_535


@requires_triton
@pytest.mark.parametrize("head_dim, block_d", [(16, 64), (40, 64), (80, 128), (160, 256)])
def test_head_dims_are_padded_to_dot_tiles(head_dim, block_d):
    for dtype in ra.SUPPORTED_DTYPES:
        block_m, block_n, padded, _ = ra.attention_config(head_dim, dtype)
        assert padded == block_d and min(block_m, block_n) >= 16


def test_rejects_bad_shapes():
    q, k, v, bank_k, bank_v = make_inputs(2, 3, 5, 7, 2, 8, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="whole number of frames"):
        ra.reference_attention_reference(q[:5], k[:5], v[:5], bank_k, bank_v, None, 2)
    with pytest.raises(ValueError, match="one flag per sample"):
        ra.reference_attention_reference(q, k, v, bank_k, bank_v, torch.tensor([True]), 2)
    with pytest.raises(ValueError, match="bool"):
        ra.reference_attention_reference(q, k, v, bank_k, bank_v, torch.tensor([1, 0]), 2)
    with pytest.raises(ValueError, match="bank_k, bank_v"):
        ra.reference_attention_reference(q, k, v, bank_k, bank_v[:, :, :8], None, 2)
    with pytest.raises(ValueError, match="heads"):
        ra.reference_attention_reference(q, k, v, bank_k, bank_v, None, 3)


@requires_triton
def test_wide_heads_fall_back_to_reference(monkeypatch):
    monkeypatch.setattr(ra, "use_triton", lambda *tensors: True)
    inputs = make_inputs(1, 2, 3, 4, 1, ra.MAX_HEAD_DIM + 8, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="MAX_HEAD_DIM"):
        ra.reference_attention_triton(*inputs, None, 1)
    torch.testing.assert_close(ra.reference_attention(*inputs, None, 1),
                               ra.reference_attention_reference(*inputs, None, 1))
