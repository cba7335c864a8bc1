"""Kernel tests run the Triton kernels compiled on a CUDA device, or under Triton's CPU interpreter
(tests/conftest.py switches the interpreter on when there is no CUDA)."""

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    """Where kernel parity tests put their tensors: CUDA when present, else the CPU (interpreted)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
