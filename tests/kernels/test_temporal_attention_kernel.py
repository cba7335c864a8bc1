"""Temporal attention: the reference against SDPA, the Triton kernel against the reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from emote_kernels import temporal_attention as ta

requires_triton = pytest.mark.skipif(ta.triton is None, reason="triton is not installed")

TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def make_qkv(
    batch: int, frames: int, positions: int, heads: int, head_dim: int, dtype: torch.dtype,
    device: torch.device, layout: str = "contiguous", seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in the frame-stacked layout ``[(b*f), h*w, heads*head_dim]``.

    ``layout``: ``contiguous``; ``fused`` (strided chunks of one QKV projection output); ``mixed``
    (q contiguous, k a view with channel stride 2, v a view whose positions are the outer memory axis).
    """
    generator = torch.Generator().manual_seed(seed)
    rows, channels = batch * frames, heads * head_dim

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    if layout == "fused":
        return randn(rows, positions, 3 * channels).chunk(3, dim=-1)
    if layout == "mixed":
        k = randn(rows, positions, 2 * channels)[..., ::2]
        v = randn(positions, rows, channels).transpose(0, 1)
        return randn(rows, positions, channels), k, v
    return randn(rows, positions, channels), randn(rows, positions, channels), randn(rows, positions, channels)


def sdpa_transposed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, heads: int) -> torch.Tensor:
    """The usual motion-module path: (b f) (hw) (n d) -> (b hw) n f d, SDPA, and back."""
    rows, positions, channels = q.shape
    batch, head_dim = rows // frames, channels // heads

    def to_sequences(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch, frames, positions, heads, head_dim).permute(0, 2, 3, 1, 4)
        return x.reshape(batch * positions, heads, frames, head_dim).contiguous()

    out = F.scaled_dot_product_attention(to_sequences(q), to_sequences(k), to_sequences(v))
    out = out.reshape(batch, positions, heads, frames, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(rows, positions, channels)


@pytest.mark.parametrize(
    "batch, frames, positions, heads, head_dim",
    [(2, 13, 15, 2, 40), (1, 28, 6, 8, 160), (3, 17, 10, 1, 80)],
)
def test_reference_matches_sdpa_on_transposed_tensors(batch, frames, positions, heads, head_dim):
    q, k, v = make_qkv(batch, frames, positions, heads, head_dim, torch.float64, torch.device("cpu"))
    expected = sdpa_transposed(q, k, v, frames, heads)
    torch.testing.assert_close(ta.temporal_attention_reference(q, k, v, frames, heads), expected,
                               atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("batch, frames, context", [(2, 12, 4), (1, 5, 4), (3, 9, 1)])
def test_reference_with_context_frames_is_the_full_attention_sliced(batch, frames, context):
    """Context frames are keys and values only: the queries of the others give those frames' rows of the
    full attention."""
    q, k, v = make_qkv(batch, frames, 7, 2, 16, torch.float64, torch.device("cpu"))
    positions, channels = q.shape[1:]
    full = ta.temporal_attention_reference(q, k, v, frames, 2).view(batch, frames, positions, channels)
    queries = q.view(batch, frames, positions, channels)[:, context:].flatten(0, 1)
    out = ta.temporal_attention_reference(queries, k, v, frames, 2, context)
    assert out.shape == (batch * (frames - context), positions, channels)
    torch.testing.assert_close(out, full[:, context:].flatten(0, 1), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "frames, head_dim, heads, height, width, dtype, layout",
    [
        (13, 40, 2, 3, 5, torch.float32, "contiguous"),
        (17, 80, 2, 3, 5, torch.float32, "fused"),
        (28, 160, 1, 5, 3, torch.float32, "mixed"),
        (13, 160, 2, 3, 5, torch.float16, "fused"),
        (17, 40, 8, 2, 3, torch.float16, "contiguous"),
        (28, 80, 2, 3, 5, torch.float16, "mixed"),
        (18, 40, 2, 3, 5, torch.bfloat16, "contiguous"),
    ],
)
@requires_triton
def test_triton_matches_reference(frames, head_dim, heads, height, width, dtype, layout, device):
    q, k, v = make_qkv(2, frames, height * width, heads, head_dim, dtype, device, layout)
    out = ta.temporal_attention_triton(q, k, v, frames, heads)
    expected = ta.temporal_attention_reference(q, k, v, frames, heads)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("frames, context, dtype, layout", [(12, 4, torch.float32, "contiguous"),
                                                           (17, 3, torch.float16, "fused"),
                                                           (9, 8, torch.float32, "mixed")])
@requires_triton
def test_triton_with_context_frames_matches_reference(frames, context, dtype, layout, device):
    q, k, v = make_qkv(2, frames, 6, 2, 40, dtype, device, layout)
    queries = q[:2 * (frames - context)]
    out = ta.temporal_attention_triton(queries, k, v, frames, 2, context)
    expected = ta.temporal_attention_reference(queries, k, v, frames, 2, context)
    assert out.shape == queries.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@requires_triton
def test_triton_single_frame_returns_v(device):
    """With one frame every query attends only to itself, so the output is v (15 of 16 rows padded)."""
    q, k, v = make_qkv(2, 1, 24, 2, 40, torch.float32, device)
    torch.testing.assert_close(ta.temporal_attention_triton(q, k, v, 1, 2), v, atol=1e-6, rtol=1e-6)


def test_grid_keeps_big_dimension_off_the_limited_axes():
    batch, positions, heads = 4, 128 * 128, 8
    grid = ta.attention_grid(batch, positions, heads)
    assert grid[0] == batch * positions > 65_535
    assert math.prod(grid) == batch * positions * heads
    assert max(grid[1:]) <= 65_535


@requires_triton
@pytest.mark.parametrize("frames, head_dim, block_f, block_d",
                         [(8, 40, 16, 64), (18, 80, 32, 64), (48, 160, 64, 64), (3, 8, 16, 16), (100, 40, 128, 16)])
def test_blocks_are_padded_to_dot_tiles(frames, head_dim, block_f, block_d):
    assert ta.attention_config(frames, head_dim)[:2] == (block_f, block_d)


def test_rejects_bad_shapes():
    q = torch.zeros(12, 15, 80)
    with pytest.raises(ValueError, match="num_frames"):
        ta.temporal_attention_reference(q, q, q, 5, 2)
    with pytest.raises(ValueError, match="heads"):
        ta.temporal_attention_reference(q, q, q, 6, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        ta.temporal_attention_reference(q, q, q[:, :14], 6, 2)
    with pytest.raises(ValueError, match="context_frames"):
        ta.temporal_attention_reference(q, q, q, 6, 2, context_frames=6)
    with pytest.raises(ValueError, match="q must be"):
        ta.temporal_attention_reference(q, q, q, 6, 2, context_frames=2)


@requires_triton
def test_too_many_frames_falls_back_to_reference(monkeypatch):
    monkeypatch.setattr(ta, "use_triton", lambda *tensors: True)
    q, k, v = make_qkv(1, ta.MAX_FRAMES + 1, 2, 1, 16, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="MAX_FRAMES"):
        ta.temporal_attention_triton(q, k, v, ta.MAX_FRAMES + 1, 1)
    torch.testing.assert_close(
        ta.temporal_attention(q, k, v, ta.MAX_FRAMES + 1, 1),
        ta.temporal_attention_reference(q, k, v, ta.MAX_FRAMES + 1, 1),
    )
