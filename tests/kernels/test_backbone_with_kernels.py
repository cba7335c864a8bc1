"""A whole tiny backbone forward with the Triton kernels on (interpreted on CPU) against the PyTorch path."""

from __future__ import annotations

import pytest
import torch
from support import randomize_, tiny_random_model

from emote_kernels.dispatch import interpreter_enabled, reset_backend


@pytest.fixture
def kernels_mode(monkeypatch):
    def switch(mode: str) -> None:
        monkeypatch.setenv("EMOTE_KERNELS", mode)
        reset_backend()

    yield switch
    reset_backend()


@pytest.mark.skipif(not (torch.cuda.is_available() or interpreter_enabled()),
                    reason="needs CUDA or Triton's interpreter (TRITON_INTERPRET=1)")
def test_tiny_backbone_kernels_on_matches_off(kernels_mode):
    """fp32 tolerance 1e-4: both paths compute attention and norms in fp32; only the summation order differs.
    ``reference_keep`` is given, as the engine's denoiser always gives it (the kernel reads it on the device;
    clips that drop the bank are covered by tests/kernels/test_reference_attention_kernel.py, a second clip
    here would double the interpreter's 45 s)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_random_model(seed=0)
    randomize_(model.backbone, std=0.05, seed=1)
    model = model.to(device)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 3, 8, 8, generator=gen).to(device)
    audio = torch.randn(1, 3, 4, 64, generator=gen).to(device)
    keep = torch.tensor([True], device=device)
    with torch.no_grad():
        bank = model.reference_net(torch.randn(1, 4, 8, 8, generator=gen).to(device))
        motion = model.reference_net(torch.randn(2, 4, 8, 8, generator=gen).to(device)).motion_features(1)
        kernels_mode("torch")
        off = model.backbone(sample, torch.tensor([300], device=device), audio, bank.tokens, motion,
                             reference_keep=keep)
        kernels_mode("triton")
        on = model.backbone(sample, torch.tensor([300], device=device), audio, bank.tokens, motion, reference_keep=keep)
    assert (on - off).abs().max().item() <= 1e-4
    assert (on - off).abs().max().item() > 0, "the Triton path did not run"


def test_tiny_backbone_trains_with_kernels_forced(kernels_mode):
    """With grad on, every kernel op takes its PyTorch reference (the kernels have no backward): the same
    gradients as with the kernels off, bit for bit."""
    model = tiny_random_model(seed=0)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 3, 8, 8, generator=gen)
    audio = torch.randn(1, 3, 4, 64, generator=gen)
    with torch.no_grad():
        bank = model.reference_net(torch.randn(1, 4, 8, 8, generator=gen))
    grads = {}
    for mode in ("torch", "triton"):
        kernels_mode(mode)
        model.zero_grad()
        model.backbone(sample, torch.tensor([300]), audio, bank.tokens).square().mean().backward()
        grads[mode] = [p.grad.clone() for p in model.backbone.parameters() if p.grad is not None]
    assert len(grads["triton"]) == len(grads["torch"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads["torch"], grads["triton"]))
