"""Session-wide test settings.

Without CUDA, Triton kernels run under Triton's CPU interpreter. Triton fixes interpret-or-compile
when it is first imported (``torch._dynamo`` imports it too), so the switch must be set before any
test module is collected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
