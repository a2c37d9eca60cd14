"""The one device resolver and the places that use it."""

from __future__ import annotations

import pytest
import torch

from helpers import run_python
from vlmrl.agents.iql import d3rlpy_device
from vlmrl.devices import resolve_device
from vlmrl.errors import ConfigError, UserError


def test_auto_is_cuda_when_available_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device() == torch.device(expected)
    assert resolve_device("auto") == torch.device(expected)


def test_explicit_devices_pass_through_as_torch_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu:0") == torch.device("cpu:0")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", "cpu:-1x"])
def test_invalid_device_strings_are_config_errors_naming_the_value(bad):
    with pytest.raises(ConfigError, match=f"invalid device '{bad}'"):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    message = "device 'cuda' requested but CUDA is not available here; use 'cpu' or 'auto'"
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda")
    assert str(caught.value) == message
    with pytest.raises(ConfigError, match="'cuda:1' requested but CUDA is not available"):
        resolve_device(torch.device("cuda:1"))
    assert issubclass(ConfigError, UserError)  # callers that caught UserError still do


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_visible_gpus_is_a_config_error():
    assert resolve_device("cuda") == torch.device("cuda")
    missing = torch.cuda.device_count()
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{missing}")


def test_d3rlpy_device_is_indexed():
    assert d3rlpy_device("cpu") == "cpu:0"
    assert d3rlpy_device("cpu:0") == "cpu:0"
    assert d3rlpy_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu:0")
    with pytest.raises(ConfigError):
        d3rlpy_device("gpu")


def test_every_model_uses_the_same_resolver():
    from vlmrl import reward_nets
    from vlmrl.reward_labelers import clip, hf_preference

    assert clip.resolve_device is reward_nets.resolve_device is hf_preference.resolve_device is resolve_device


def test_module_does_not_import_torch():
    code = "import sys, vlmrl.devices; assert 'torch' not in sys.modules"
    run_python(code)
