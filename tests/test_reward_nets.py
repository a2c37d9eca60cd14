"""Reward nets: preprocessing conventions, ensemble inference, seeding and save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import cartpole_rollout
import vlmrl  # noqa: F401  (headless rendering defaults)
from vlmrl.errors import ConfigError, MissingWeightsError, UserError
from vlmrl.reward_nets import RewardModel, RewardNet, RewardNetConfig, downsample_frames, frames_to_tensor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cartpole() -> tuple[np.ndarray, np.ndarray]:
    """40 real CartPole frames (uint8 [40, 400, 600, 3]) and their states ([40, 4]) under a random policy."""
    return cartpole_rollout(40, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "resnet"}, "kind"),
        ({"output_activation": "sigmoid"}, "output_activation"),
        ({"input_size": 32}, "input_size"),
        ({"kind": "mlp"}, "obs_dim"),
        ({"kind": "mlp", "obs_dim": 0}, "obs_dim"),
        ({"kind": "mlp", "obs_dim": 4, "hidden_size": 0}, "hidden_size"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        RewardNetConfig(**kwargs)


def test_frames_to_tensor_layout_and_range(cartpole):
    frames, _ = cartpole
    x = frames_to_tensor(frames[:5], 64, "cpu")
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -0.5 and x.max() <= 0.5
    # CartPole's background is white: most pixels map to +0.5 in every channel.
    assert (x == 0.5).float().mean() > 0.5
    # Channel order is kept: the main coloured object is the brown pole (202, 152, 101), so
    # where the channels differ, red mostly exceeds blue (BGR would give the reverse).
    coloured = (x[:, 0] - x[:, 2]).abs() > 0.1
    assert coloured.sum() > 50
    assert (x[:, 0][coloured] > x[:, 2][coloured]).float().mean() > 0.8


def test_channel_first_and_float_frames_are_rejected(cartpole):
    frames, _ = cartpole
    with pytest.raises(ValueError, match="channel-first"):
        frames_to_tensor(frames[:2].transpose(0, 3, 1, 2), 64, "cpu")
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(frames[:2].astype(np.float32) / 255, 64, "cpu")
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        frames_to_tensor(frames[0], 64, "cpu")
    model = RewardModel(RewardNetConfig(), device="cpu")
    with pytest.raises(ValueError, match="channel-first"):
        model.predict(frames[:2].transpose(0, 3, 1, 2))


def test_downsampled_frames_give_the_same_network_input(cartpole):
    frames, _ = cartpole
    small = downsample_frames(frames, 64)
    assert small.shape == (40, 64, 64, 3) and small.dtype == np.uint8
    assert torch.equal(frames_to_tensor(small, 64, "cpu"), frames_to_tensor(frames, 64, "cpu"))
    # An area-like resize keeps the mean brightness (a nearest-neighbour one would not exactly).
    assert abs(small.mean() - frames.mean()) < 1.0
    model = RewardModel(RewardNetConfig(), ensemble_size=2, device="cpu")
    np.testing.assert_array_equal(model.predict(small), model.predict(frames))


def test_predict_shapes_and_batching(cartpole):
    frames, states = cartpole
    model = RewardModel(RewardNetConfig(), ensemble_size=3, device="cpu")
    assert model.device == torch.device("cpu")
    members = model.predict_members(frames)
    assert members.shape == (3, 40) and members.dtype == np.float32
    mean = model.predict(frames)
    assert mean.shape == (40,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, members.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.predict(frames, batch_size=7), mean, rtol=1e-5, atol=1e-6)
    # Members are initialised differently.
    assert not np.allclose(members[0], members[1])

    mlp = RewardModel(RewardNetConfig(kind="mlp", obs_dim=4), ensemble_size=2, device="cpu")
    assert mlp.predict(states).shape == (40,)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        mlp.predict(states[:, :3])


def test_reward_net_forward_shape():
    net = RewardNet(RewardNetConfig(input_size=84))
    assert net(torch.zeros(5, 3, 84, 84)).shape == (5,)
    out = RewardNet(RewardNetConfig(kind="mlp", obs_dim=4, output_activation="tanh"))(torch.randn(6, 4) * 100)
    assert out.shape == (6,) and out.abs().max() <= 1.0


def test_same_seed_same_model_and_global_rng_untouched(cartpole):
    frames, _ = cartpole
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    a = RewardModel(RewardNetConfig(), ensemble_size=2, device="cpu", seed=7).predict(frames)
    assert torch.equal(torch.rand(1), expected_draw)
    b = RewardModel(RewardNetConfig(), ensemble_size=2, device="cpu", seed=7).predict(frames)
    c = RewardModel(RewardNetConfig(), ensemble_size=2, device="cpu", seed=8).predict(frames)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_save_load_roundtrip(tmp_path, cartpole):
    frames, states = cartpole
    model = RewardModel(RewardNetConfig(input_size=48), ensemble_size=2, device="cpu", seed=3)
    model.target_mean, model.target_std = 0.25, 2.5
    model.save(tmp_path / "reward")
    meta = json.loads((tmp_path / "reward.json").read_text())
    assert (tmp_path / "reward.safetensors").is_file()
    assert meta["target_mean"] == 0.25 and meta["target_std"] == 2.5
    assert meta["ensemble_size"] == 2 and meta["config"]["input_size"] == 48
    assert "x / 255 - 0.5" in meta["preprocessing"]["normalise"] and meta["format_version"] == 1
    for name in ("reward", "reward.json", "reward.safetensors"):
        loaded = RewardModel.load(tmp_path / name, device="cpu")
        assert loaded.config == model.config and loaded.ensemble_size == 2
        np.testing.assert_array_equal(loaded.predict_members(frames), model.predict_members(frames))

    mlp = RewardModel(RewardNetConfig(kind="mlp", obs_dim=4, output_activation="none"), device="cpu")
    mlp.set_state_normaliser(states)
    mlp.save(str(tmp_path / "mlp"))
    loaded = RewardModel.load(str(tmp_path / "mlp"), device="cpu")
    np.testing.assert_array_equal(loaded.state_std, mlp.state_std)
    np.testing.assert_array_equal(loaded.predict(states), mlp.predict(states))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="nothing-here.json"):
        RewardModel.load(tmp_path / "nothing-here")

    model = RewardModel(RewardNetConfig(kind="mlp", obs_dim=4), ensemble_size=2, device="cpu")
    model.save(tmp_path / "m")
    (tmp_path / "m.safetensors").rename(tmp_path / "gone.safetensors")
    with pytest.raises(MissingWeightsError, match="m.safetensors"):
        RewardModel.load(tmp_path / "m")

    (tmp_path / "m.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    with pytest.raises(UserError, match="m.safetensors"):
        RewardModel.load(tmp_path / "m")

    (tmp_path / "gone.safetensors").rename(tmp_path / "m.safetensors")
    RewardModel.load(tmp_path / "m")  # intact again
    meta = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**meta, "ensemble_size": 3}))
    with pytest.raises(UserError, match="do not match"):
        RewardModel.load(tmp_path / "m")

    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(UserError, match="m.json"):
        RewardModel.load(tmp_path / "m")
