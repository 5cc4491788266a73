"""Every shipped YAML loads and validates; bad keys and values are refused with clear errors."""

import re
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


def _numeric_keys():
    """Every numeric key of every section: `(dotted key, the section class)`."""
    import dataclasses
    import typing

    from jaxrl_lrm.config import Config, RewardSpec
    from jaxrl_lrm.config.keys import numeric_kind

    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        cls = hints[f.name]
        if not dataclasses.is_dataclass(cls):
            if numeric_kind(cls):
                yield f.name
            continue
        sub = typing.get_type_hints(cls)
        yield from (
            f"{f.name}.{g.name}" for g in dataclasses.fields(cls) if numeric_kind(sub[g.name])
        )
    yield from ("rewards.functions[].weight",)
    assert RewardSpec  # the one numeric key of a reward entry, listed above


def _with(key, value):
    if key.startswith("rewards.functions[]."):
        return [f"rewards.functions=[{{fn: task, {key.rsplit('.', 1)[1]}: {value}}}]"]  # entry 0
    return [f"{key}={value}"]


@pytest.mark.parametrize("key", list(_numeric_keys()))
def test_every_numeric_key_refuses_non_finite_and_out_of_range_values(key):
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    for bad in (".inf", "-.inf", ".nan"):
        with pytest.raises(
            ConfigError,
            match=rf"^{re.escape(key.replace('[]', '[0]'))}=(-?inf|nan): expected (a finite|a value of type)",
        ):
            load_config(smoke, _with(key, bad))
    if key == "rewards.functions[].weight":  # any finite weight is allowed
        assert load_config(smoke, _with(key, -2)).rewards.functions[0].weight == -2.0
        return
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=-1000000(\.0)?: expected"):
        load_config(smoke, _with(key, -1000000))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.min_lr_ratio=-0.5", "train.min_lr_ratio=-0.5: expected 0 <= x <= 1"),
        ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5: expected 0 <= x <= 1"),
        ("train.lr=.inf", "train.lr=inf: expected a finite number, > 0"),
        ("train.lr=0", "train.lr=0.0: expected > 0"),
        ("train.b2=1.0", "train.b2=1.0: expected 0 <= x < 1"),
        ("train.log_every=0", "train.log_every=0: expected >= 1"),
        ("mesh.fsdp=0", "mesh.fsdp=0: expected -1 or >= 1"),
        ("data.max_prompt_len=0", "data.max_prompt_len=0: expected >= 1"),
        ("sampling.max_new_tokens=-3", "sampling.max_new_tokens=-3: expected >= 1"),
        ("algorithm.gamma=1.5", "algorithm.gamma=1.5: expected 0 <= x <= 1"),
        ("seed=-1", "seed=-1: expected >= 0"),
        (
            "rewards.functions=[task, {fn: task, weight: .inf}]",
            "rewards.functions[1].weight=inf: expected a finite number",
        ),
    ],
)
def test_range_errors_name_key_value_and_range(override, message):
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(smoke, [override])
    assert str(e.value) == message


def test_keys_without_effect_and_override_typos_are_config_errors():
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    # smoke.yaml sets model.preset and model.overrides: neither would act on a checkpoint
    with pytest.raises(ConfigError, match=r"^model.preset='tiny': expected unset when model.path"):
        load_config(smoke, ["model.path=/ckpt"])
    with pytest.raises(ConfigError, match=r"^model.overrides=\{'d_model': 32.*unset when model"):
        load_config(smoke, ["model.path=/ckpt", "model.preset=null"])
    c = load_config(smoke, ["model.path=/ckpt", "model.preset=null", "model.overrides={}"])
    assert (c.model.path, c.model.preset, c.model.overrides) == ("/ckpt", None, {})
    with pytest.raises(ConfigError, match=r"^model.overrides.n_layerz=2: expected a ModelConfig "):
        load_config(smoke, ["model.overrides.n_layerz=2"])
    with pytest.raises(ConfigError, match=r"'n_layers'"):  # the valid names are listed
        load_config(smoke, ["model.overrides.n_layerz=2"])
    with pytest.raises(
        ConfigError, match=r"^model.overrides.dtype='bfloat16': expected model.dtype"
    ):
        load_config(smoke, ["model.overrides.dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"^model.overrides=.*arch='gpt'"):
        load_config(smoke, ["model.overrides.arch=gpt"])
    with pytest.raises(ConfigError, match=r"^model.preset='huge': expected one of"):
        load_config(smoke, ["model.preset=huge"])
    assert load_config(None).model.preset is None  # the default model is the `tiny` preset


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps.x=1", "override 'train.steps.x=1': 'steps' is not a section"),
        ("=3", "override '=3': expected key.path=value"),
        ("train..steps=3", "override 'train..steps=3': expected key.path=value"),
        ("train.steps=[1", "override 'train.steps=[1': the value is not valid YAML"),
        ("bogus.key=1", "unknown config key 'bogus'"),
        ("train=5", "train=5: expected a mapping"),
    ],
)
def test_bad_overrides_are_config_errors(override, message):
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(smoke, [override])
    assert str(e.value).startswith(message)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain:\n  steps: 4\n  lr: [1e-5\nsampling: {}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:5:\d+: YAML syntax error"):
        load_config(bad)
    (tmp_path / "empty_section.yaml").write_text("train:\n")  # an empty section is no error
    c = load_config(tmp_path / "empty_section.yaml", ["train.steps=2"])
    assert c.train.steps == 2
