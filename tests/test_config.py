"""Config loading: every task config validates; bad keys, types and values name file and key."""

from pathlib import Path

import pytest
import yaml

from vlmrl.config import ExperimentConfig, load_config
from vlmrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.joinpath("configs").glob("*.yaml"))
ONLINE_CONFIGS = [p for p in CONFIGS if yaml.safe_load(p.read_text()).get("agent", {}).get("algo") in ("ppo", "sac")]


@pytest.mark.parametrize("path", ONLINE_CONFIGS, ids=lambda p: p.name)
def test_every_online_task_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml())
    assert load_config(resolved) == config


def test_relabel_and_offline_configs_load():
    from vlmrl.offline_train import load_offline_config
    from vlmrl.relabel import load_relabel_config

    assert load_relabel_config(REPO / "configs/pendulum_relabel_oracle_pref.yaml").kind == "preference"
    vllm = load_relabel_config(REPO / "configs/pendulum_relabel_vllm_pref.yaml").preference.teacher
    assert (vllm.kind, vllm.base_url) == ("openai", "http://127.0.0.1:8000/v1")
    hosted = load_relabel_config(REPO / "configs/pendulum_relabel_hosted_pref.yaml").preference.teacher
    assert hosted.base_url.startswith("https://") and hosted.api_key_env == "OPENAI_API_KEY"
    assert load_offline_config(REPO / "configs/pendulum_offline_iql.yaml").agent.algo == "iql"


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
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
        BASE.replace("{kind: oracle}", "{kind: clip, clip: {goal_prompts: [a], baseline_prompts: [b], alpha: 1.5}}"),
    )
    with pytest.raises(ConfigError, match=r"labeler\.clip: alpha must be in \[0, 1\], got 1.5"):
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
