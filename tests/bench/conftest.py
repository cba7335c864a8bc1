"""Benchmark tests run with one intra-op thread: on a shared machine small networks run faster that way,
and nothing here is timed."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
