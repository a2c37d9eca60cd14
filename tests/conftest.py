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


# Tiny random Qwen2-VL models (tests/tiny_vlm.py), shared by the transformers VLM test modules;
# transformers is imported only by the modules that use them.
@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A tiny random Qwen2-VL saved to a folder: its answers are whatever random weights say."""
    from tiny_vlm import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("random-qwen2-vl"))


@pytest.fixture(scope="module", params=["0", "1"])
def scripted_model(request, tmp_path_factory):
    """``(folder, reply)``: a tiny Qwen2-VL scripted to answer ``reply`` ("0" or "1") to every turn."""
    from tiny_vlm import build_tiny_qwen2_vl

    path = build_tiny_qwen2_vl(tmp_path_factory.mktemp(f"replies-{request.param}"), scripted_reply=request.param)
    return path, request.param
