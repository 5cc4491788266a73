"""The one registry of algorithms and the `algorithm.*` config keys it validates: every key
defaults to `None` (the published default), a key the algorithm ignores is refused by name."""

import dataclasses
from pathlib import Path

import pytest

from jaxrl_lrm import algorithms, config
from jaxrl_lrm.config import AlgorithmSection, ConfigError, load_config

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def test_the_config_names_come_from_the_registry():
    assert config.ALGORITHMS is algorithms.NAMES
    assert set(algorithms.NAMES) == set(algorithms.REGISTRY)
    assert {
        "grpo",
        "dr_grpo",
        "dapo",
        "gspo",
        "cispo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "ppo",
    } == set(algorithms.NAMES)
    for name, preset in algorithms.REGISTRY.items():
        assert "arXiv" in preset.source, name  # every preset states where its defaults come from
        assert preset.keys <= set(algorithms.OVERRIDABLE), name
        assert set(preset.defaults) <= {
            f.name for f in dataclasses.fields(algorithms.AlgorithmSpec)
        }


def test_every_overridable_key_defaults_to_none():
    fields = {f.name: f.default for f in dataclasses.fields(AlgorithmSection)}
    assert set(fields) == {"name", "group_size", *algorithms.OVERRIDABLE}
    for key in algorithms.OVERRIDABLE:
        assert fields[key] is None, key


# (algorithm, key, value) that the algorithm ignores or contradicts
REFUSED = [
    ("dapo", "beta", 0.04),
    ("dapo", "kl_kind", "k3"),
    ("ppo", "kl_kind", "k3"),
    ("reinforce_pp", "kl_kind", "k2"),
    ("rloo", "kl_kind", "k3"),
    ("reinforce_pp_baseline", "kl_kind", "k1"),
    *[
        (n, k, v)
        for n in ("grpo", "dapo", "rloo", "reinforce_pp", "cispo")
        for k, v in (("value_clip", 0.2), ("lam", 0.9), ("value_lr", 1e-5), ("value_path", "x"))
    ],
    ("grpo", "gamma", 0.9),
    ("reinforce_pp_baseline", "gamma", 0.9),
    *[
        (n, k, v)
        for n in ("grpo", "gspo", "ppo")
        for k, v in (("max_gen_rounds", 2), ("overlong_cache", 16))
    ],
    ("grpo", "kl_target", 0.1),
    ("dapo", "kl_target", 0.1),
    ("rloo", "std_normalize", False),
    ("ppo", "std_normalize", False),
    ("cispo", "dual_clip", 3.0),
]


@pytest.mark.parametrize("name,key,value", REFUSED, ids=lambda x: str(x))
def test_a_key_the_algorithm_ignores_is_refused_by_name(name, key, value):
    with pytest.raises(ConfigError, match=rf"algorithm\.{key}="):
        AlgorithmSection(name=name, **{key: value})
    with pytest.raises(ConfigError, match=rf"algorithm\.{key}="):
        load_config(SMOKE, [f"algorithm.name={name}", f"algorithm.{key}={value}"])


def test_keys_ignored_because_of_another_setting_are_refused():
    with pytest.raises(ConfigError, match="algorithm.kl_kind"):  # GSPO's beta is 0
        AlgorithmSection(name="gspo", kl_kind="k1")
    AlgorithmSection(name="gspo", kl_kind="k1", beta=0.01)
    with pytest.raises(ConfigError, match="algorithm.kl_horizon"):
        AlgorithmSection(name="ppo", kl_horizon=100.0)
    AlgorithmSection(name="ppo", kl_horizon=100.0, kl_target=0.05)
    with pytest.raises(ConfigError, match="algorithm.kl_target"):
        AlgorithmSection(name="ppo", beta=0.0, kl_target=0.05)


def test_explicit_values_win_even_when_equal_to_another_algorithms_default():
    """`clip_low: 0.2` for GSPO used to give 3e-4 (0.2 was taken for "unset")."""
    spec = algorithms.resolve(AlgorithmSection(name="gspo", clip_low=0.2))
    assert (spec.clip_low, spec.clip_high) == (0.2, 4e-4)
    assert algorithms.resolve(AlgorithmSection(name="gspo")).clip_low == 3e-4
    assert algorithms.resolve(AlgorithmSection(name="grpo", beta=0.0)).beta == 0.0
    assert algorithms.resolve(AlgorithmSection(name="ppo", gamma=0.9)).gamma == 0.9
    assert algorithms.resolve(AlgorithmSection(name="reinforce_pp", gamma=0.9)).gamma == 0.9


def test_published_defaults():
    spec = {n: algorithms.resolve(AlgorithmSection(name=n)) for n in algorithms.NAMES}
    assert (spec["grpo"].beta, spec["grpo"].kl_kind, spec["grpo"].agg) == (
        0.04,
        "k3",
        "seq-mean-token-mean",
    )
    assert spec["dapo"].beta == 0.0 and spec["dapo"].max_gen_rounds == 3
    assert (spec["cispo"].loss, spec["cispo"].advantage, spec["cispo"].agg) == (
        "cispo",
        "group",
        "token-mean",
    )
    assert (spec["cispo"].clip_low, spec["cispo"].clip_high) == (1.0, 0.28)
    assert (
        spec["rloo"].advantage,
        spec["rloo"].kl_in_reward,
        spec["rloo"].kl_kind,
        spec["rloo"].agg,
    ) == ("rloo", True, "k1", "seq-mean-token-sum")
    assert spec["reinforce_pp_baseline"].advantage == "reinforce_pp_baseline"
    assert spec["reinforce_pp_baseline"].kl_in_reward
    assert (spec["ppo"].gamma, spec["ppo"].lam, spec["ppo"].value_clip, spec["ppo"].beta) == (
        1.0,
        0.95,
        0.2,
        0.02,
    )
    assert spec["ppo"].kl_horizon == 10000.0 and spec["ppo"].kl_target is None
    for s in spec.values():
        hash(s)  # a jit static argument


def test_non_algorithm_keys_and_validation_still_work():
    assert algorithms.resolve(AlgorithmSection(name="grpo", group_size=2)).group_size == 2
    with pytest.raises(ConfigError, match="algorithm.name='nope'"):
        AlgorithmSection(name="nope")
    for key, value in (
        ("beta", -1.0),
        ("kl_kind", "k9"),
        ("clip_low", 0.0),
        ("gamma", 2.0),
        ("agg", "sum"),
        ("dual_clip", 0.5),
        ("tis_max", 0.5),
    ):
        with pytest.raises(ConfigError, match=rf"algorithm\.{key}="):
            AlgorithmSection(name="grpo", **{key: value})
    assert (
        algorithms.resolve(AlgorithmSection(name="grpo", beta=0.1, kl_kind="low_var_kl")).kl_kind
        == "low_var_kl"
    )


@pytest.mark.parametrize("name", algorithms.NAMES)
def test_every_algorithm_loads_on_the_smoke_config(name):
    c = load_config(SMOKE, [f"algorithm.name={name}"])
    assert algorithms.resolve(c.algorithm).name == name
    # a saved config reloads to the same section (unset keys stay None, not filled in)
    assert config.from_dict(config.to_dict(c)) == c
    assert c.algorithm.clip_low is None
