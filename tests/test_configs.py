"""Every shipped YAML loads and validates; bad keys and values are refused with clear errors."""

from pathlib import Path

import pytest

from jaxrl_lrm import algorithms
from jaxrl_lrm.config import ConfigError, load_config, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs():
    names = {p.stem for p in CONFIGS}
    assert {
        "smoke",
        "demo",
        "gsm8k_grpo",
        "ppo",
        "dapo",
        "gspo",
        "sft",
        "dpo",
        "reward_model",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_starts_with_a_comment(path):
    config = load_config(path)
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} must start with a comment"
    for word in ("Run:", "Hardware:", "Expected:"):
        assert word in text.split("\n\n")[0] or word in text[:1500], (path.name, word)
    # the resolved config round-trips through its dict form
    assert load_config(path) == config
    assert to_dict(config)["algorithm"]["name"] == config.algorithm.name
    # its algorithm section resolves (no key the algorithm ignores; see tests/algorithms)
    assert algorithms.resolve(config.algorithm).name == config.algorithm.name


def test_dotted_overrides_and_errors(tmp_path):
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    c = load_config(
        smoke,
        [
            "train.steps=7",
            "algorithm.name=rloo",
            "mesh.fsdp=2",
            "rewards.functions=[{fn: task, weight: 2}]",
        ],
    )
    assert (c.train.steps, c.algorithm.name, c.mesh.fsdp) == (7, "rloo", 2)
    assert c.rewards.functions[0].weight == 2.0
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        load_config(smoke, ["train.stepz=3"])
    with pytest.raises(
        ConfigError, match=r"train.steps='x': expected a value of type <class 'int'>"
    ):
        load_config(smoke, ["train.steps=x"])
    with pytest.raises(ConfigError, match="algorithm.name='ppo2': expected one of"):
        load_config(smoke, ["algorithm.name=ppo2"])
    with pytest.raises(ConfigError, match="algorithm.beta=0.1: 'dapo' does not use it"):
        load_config(smoke, ["algorithm.name=dapo", "algorithm.beta=0.1"])
    assert load_config(smoke, ["algorithm.name=cispo"]).algorithm.name == "cispo"
    with pytest.raises(ConfigError, match="sampling.top_p=1.5"):
        load_config(smoke, ["sampling.top_p=1.5"])
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(smoke, ["train.minibatches=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(smoke, ["train.steps"])


def test_multihost_tpu_detection():
    from jaxrl_lrm.cli import on_multihost_tpu

    assert on_multihost_tpu({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert not on_multihost_tpu({"TPU_WORKER_HOSTNAMES": "10.0.0.2"})  # a single-host slice
    assert not on_multihost_tpu({})
