"""Config loading: every task config validates; bad keys, types and values name file and key."""

from pathlib import Path

import pytest
import yaml

from helpers import run_python
from vlmrl.config import (
    ExperimentConfig,
    OfflineExperimentConfig,
    RelabelConfig,
    load_config,
    load_offline_config,
    load_relabel_config,
)
from vlmrl.config_loading import build_dataclass, to_plain
from vlmrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.joinpath("configs").glob("*.yaml"))
ONLINE_CONFIGS = [p for p in CONFIGS if yaml.safe_load(p.read_text()).get("agent", {}).get("algo") in ("ppo", "sac")]


def loader_of(path: Path):
    """The loader and config class a file under configs/ is for, by its name."""
    if "_relabel_" in path.name:
        return load_relabel_config, RelabelConfig
    if "_offline_" in path.name:
        return load_offline_config, OfflineExperimentConfig
    return load_config, ExperimentConfig


def test_every_config_file_is_covered():
    assert CONFIGS and set(ONLINE_CONFIGS) == {p for p in CONFIGS if loader_of(p)[1] is ExperimentConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_with_its_loader_and_round_trips(path):
    load, cls = loader_of(path)
    config = load(path)
    assert isinstance(config, cls)
    assert build_dataclass(cls, to_plain(config), str(path)) == config


@pytest.mark.parametrize("path", ONLINE_CONFIGS, ids=lambda p: p.name)
def test_every_online_task_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml())
    assert load_config(resolved) == config


def test_relabel_and_offline_configs_load():
    oracle = load_relabel_config(REPO / "configs/pendulum_relabel_oracle_pref.yaml")
    assert (oracle.labeler.kind, oracle.labeler.family) == ("teacher", "pair")
    assert (oracle.preference.net.kind, oracle.preference.net.hidden_size, oracle.preference.fit.epochs) == ("mlp", 64, 20)
    vllm = load_relabel_config(REPO / "configs/pendulum_relabel_vllm_pref.yaml").labeler
    assert (vllm.kind, vllm.base_url) == ("openai", "http://127.0.0.1:8000/v1")
    hosted = load_relabel_config(REPO / "configs/pendulum_relabel_hosted_pref.yaml").labeler
    assert hosted.base_url.startswith("https://") and hosted.api_key_env == "OPENAI_API_KEY"
    assert load_offline_config(REPO / "configs/pendulum_offline_iql.yaml").agent.algo == "iql"


def write(tmp_path, text, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
task: t
env: {id: vlmrl/CartPole-v1}
labeler: {kind: oracle}
agent: {algo: ppo, total_timesteps: 100}
"""


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, BASE + "run: {seed: 1, sede: 2}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "run.sede" in message and "seed" in message


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, BASE.replace("total_timesteps: 100", "total_timesteps: lots"))
    with pytest.raises(ConfigError, match=r"agent\.total_timesteps must be an integer"):
        load_config(path)


def test_value_outside_literal_lists_allowed_values(tmp_path):
    path = write(tmp_path, BASE.replace("algo: ppo", "algo: dqn"))
    with pytest.raises(ConfigError, match=r"agent\.algo = 'dqn' is not allowed; allowed values: 'ppo', 'sac'"):
        load_config(path)


def test_out_of_range_value_names_section_and_field(tmp_path):
    path = write(
        tmp_path,
        BASE.replace("{kind: oracle}", "{kind: clip, goal_prompts: [a], baseline_prompts: [b], alpha: 1.5}"),
    )
    with pytest.raises(ConfigError, match=r"labeler: alpha must be in \[0, 1\], got 1.5"):
        load_config(path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "task: t\nenv: {id: x}\nlabeler: {kind: oracle}\n")
    with pytest.raises(ConfigError, match="missing required key agent"):
        load_config(path)


def test_set_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, BASE)
    config = load_config(path, ["agent.total_timesteps=500", "run.seed=7", "env.kwargs.episode_length=50"])
    assert config.agent.total_timesteps == 500 and config.run.seed == 7
    assert config.env.kwargs["episode_length"] == 50
    with pytest.raises(ConfigError, match=r"bad.yaml: env: n_envs must be > 0, got 0"):
        load_config(path, ["env.n_envs=0"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["agent.total_timesteps"])


def test_label_every_without_distillation_is_rejected(tmp_path):
    path = write(tmp_path, BASE + "reward: {label_every: 8}\n")
    with pytest.raises(ConfigError, match="label_every > 1 needs distill: true"):
        load_config(path)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "task: [unclosed"))


def test_unknown_labeler_kind_lists_the_registered_kinds(tmp_path):
    path = write(tmp_path, BASE.replace("{kind: oracle}", "{kind: preference}"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "labeler.kind" in message and "'preference'" in message
    for kind in ("clip", "hf", "openai", "oracle", "reward_model", "teacher"):
        assert kind in message
    # (not "brightness": tests/test_adding_a_labeler.py registers that kind in the same process)
    relabel = write(tmp_path, "labeler: {kind: sparkle}\n", "relabel.yaml")
    with pytest.raises(ConfigError, match=r"labeler\.kind: unknown labeler kind 'sparkle'; registered kinds: "):
        load_relabel_config(relabel)


def test_a_vlm_labeler_without_preference_goal_names_it(tmp_path):
    openai = "{kind: openai, base_url: 'http://127.0.0.1:8000/v1', model: m}"
    path = write(tmp_path, BASE.replace("{kind: oracle}", openai))
    with pytest.raises(ConfigError, match=r"preference\.goal") as error:
        load_config(path)
    assert str(path) in str(error.value) and "'openai'" in str(error.value)
    assert load_config(path, ["preference.goal=to open the drawer"]).preference.goal == "to open the drawer"
    relabel = write(tmp_path, f"labeler: {openai}\n", "relabel.yaml")
    with pytest.raises(ConfigError, match=r"preference\.goal"):
        load_relabel_config(relabel)
    # The scripted teacher reads only true rewards: it needs no goal.
    assert load_config(path, ["labeler={kind: teacher}"]).labeler.kind == "teacher"


def test_new_settings_are_reachable_with_set_overrides(tmp_path):
    path = write(tmp_path, BASE.replace("{kind: oracle}", "{kind: teacher}"))
    config = load_config(path, [
        "preference.reward_normalisation=none",
        "preference.label_frame_mb=64",
        "preference.fit.heldout_fraction=0.25",
        "reward.fit.heldout_fraction=0",
        "labeler.gamma=0.9",
        "labeler.return_scale=12.5",
    ])
    assert config.preference.reward_normalisation == "none" and config.preference.label_frame_mb == 64
    assert config.preference.fit.heldout_fraction == 0.25 and config.reward.fit.heldout_fraction == 0.0
    assert (config.labeler.gamma, config.labeler.return_scale) == (0.9, 12.5)
    with pytest.raises(ConfigError, match=r"allowed values: 'buffer_minmax', 'none'"):
        load_config(path, ["preference.reward_normalisation=zscore"])
    with pytest.raises(ConfigError, match=r"heldout_fraction must be in \[0, 1\)"):
        load_config(path, ["preference.fit.heldout_fraction=1"])
    with pytest.raises(ConfigError, match=r"gamma must be in \(0, 1\]"):
        load_config(path, ["labeler.gamma=0"])
    relabel = write(tmp_path, "labeler: {kind: teacher}\n", "relabel.yaml")
    config = load_relabel_config(relabel, ["labeler.gamma=0.5", "labeler.return_scale=3",
                                           "preference.fit.heldout_fraction=0.2"])
    assert (config.labeler.gamma, config.labeler.return_scale, config.preference.fit.heldout_fraction) == (0.5, 3.0, 0.2)


def test_importing_the_config_module_does_not_import_torch():
    code = "import sys, vlmrl.config; print('torch' in sys.modules)"
    assert run_python(code, cwd=REPO).stdout.strip() == "False"
