"""Session-wide test settings, and the fixtures several test packages use (``portrait``).

Without CUDA, Triton kernels run under Triton's CPU interpreter. Triton fixes interpret-or-compile
when it is first imported (``torch._dynamo`` imports it too), so the switch must be set before any
test module is collected.
"""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    """A random 128x128 RGB image and a face mask over its middle (:func:`support.random_portrait`)."""
    from support import random_portrait  # here: support imports the models, which must not precede the switch above

    return random_portrait(128)
