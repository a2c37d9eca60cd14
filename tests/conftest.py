"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread. Toy models' ops take microseconds, and on a
    2-core machine a second intra-op thread only adds contention (measured 5-50x slower when
    other processes share the cores). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
