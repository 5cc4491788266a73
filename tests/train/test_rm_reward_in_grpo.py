"""A saved reward model plugged into RL: the `models.value_model` checkpoint format round-trips,
GRPO's rewards are the reward model's scores (`scorers.reward_model_from_checkpoint`,
in-process), and PPO's value model starts from the same checkpoint's head
(`algorithm.value_path`)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models, sharding, train
from jaxrl_lrm.config import load_config
from jaxrl_lrm.data.tokenizer import CharTokenizer
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.value_model import VALUE_HEAD_FILE, load_value_model, save_value_model
from jaxrl_lrm.offline import reward_model
from jaxrl_lrm.rewards import executor as executor_mod
from jaxrl_lrm.scorers import RewardModelScorer
from jaxrl_lrm.train import rl, rl_stage, setup

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
BASE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "train.steps=2", "train.eval_every=0"]
RM_FN = "jaxrl_lrm.scorers:reward_model_from_checkpoint"


def _smoke_tokenizer():
    config = load_config(SMOKE, BASE)
    task = setup.resolve_task(config.data.task, config.data.task_args)
    return config, setup.build_tokenizer(config, task)


def _tiny_rm(seed: int = 7, head_scale: float = 0.3) -> models.Model:
    """The smoke policy's architecture (so PPO can use it as its value model), another random
    backbone, and a random non-zero head, so rewards differ between completions."""
    config, tok = _smoke_tokenizer()
    policy = setup.build_policy(config, tok, mesh=None)
    model = models.init(policy.config, seed, tokenizer=tok)
    rng = np.random.default_rng(seed)
    head = {
        "w": jnp.asarray(head_scale * rng.normal(size=policy.config.d_model), jnp.float32),
        "b": jnp.asarray(0.25, jnp.float32),
    }
    return model.replace(params={**model.params, "value_head": head})


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    rm = _tiny_rm()
    path = tmp_path_factory.mktemp("rm") / "rm"
    save_value_model(rm, path)
    return rm, path


@jax.jit(static_argnums=1)
def _plain_values(params, config, tokens_1T):
    """Reference: causal forward over one unpadded sequence, the head at every position."""
    hidden, _ = transformer.forward_hidden(params, config, tokens_1T)
    return transformer.value_head(params, hidden)


# ----------------------------------------------------------------------------- the format


def test_value_model_round_trip(rm_dir):
    rm, path = rm_dir
    assert (path / VALUE_HEAD_FILE).is_file() and (path / "model.safetensors").is_file()
    assert not list(path.glob("*.npz"))
    from safetensors.numpy import load_file

    raw = load_file(str(path / VALUE_HEAD_FILE))
    assert {k: (v.dtype, v.shape) for k, v in raw.items()} == {
        "w": (np.float32, (rm.config.d_model,)),
        "b": (np.float32, ()),
    }
    loaded = load_value_model(path)
    assert isinstance(loaded.tokenizer, CharTokenizer)
    assert loaded.tokenizer.alphabet == rm.tokenizer.alphabet
    assert loaded.config == rm.config
    jax.tree.map(np.testing.assert_array_equal, loaded.params, rm.params)
    # The old entry points are the same functions, and the backbone alone still loads.
    assert reward_model.load_reward_model is load_value_model is models.load_value_model
    assert reward_model.save_reward_model is save_value_model is models.save_value_model
    assert not models.load_pretrained(path).has_value_head
    # On a mesh the head gets the value-head sharding of `models.init(value_head=True)`.
    mesh = sharding.make_mesh(2, 4, 1)
    sharded = load_value_model(path, mesh=mesh, dtype="bfloat16")
    want = sharding.param_shardings(rm.config, mesh, value_head=True)["value_head"]
    for k in ("w", "b"):
        assert sharded.params["value_head"][k].sharding == want[k]
        assert sharded.params["value_head"][k].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(sharded.params["value_head"]["w"], np.float32),
        np.asarray(rm.params["value_head"]["w"].astype(jnp.bfloat16), np.float32),
    )


def test_value_model_errors(rm_dir, tmp_path):
    rm, path = rm_dir
    bare = rm.replace(params={k: v for k, v in rm.params.items() if k != "value_head"})
    with pytest.raises(ValueError, match="no value_head"):
        save_value_model(bare, tmp_path / "x")
    bad = rm.replace(params={**rm.params, "value_head": {"w": jnp.zeros(3), "b": jnp.zeros(())}})
    with pytest.raises(ValueError, match=r"'w': \(3,\).*expected w of shape \(32,\)"):
        save_value_model(bad, tmp_path / "x")
    models.save_pretrained(bare, tmp_path / "plain")
    with pytest.raises(ValueError, match="value_head.safetensors' does not exist"):
        load_value_model(tmp_path / "plain")
    from safetensors.numpy import save_file

    save_file(
        {"w": np.zeros((4,), np.float32), "b": np.zeros((1,), np.float32)},
        str(tmp_path / "plain" / VALUE_HEAD_FILE),
    )
    with pytest.raises(ValueError, match=r"'b': \(1,\).*and a scalar b"):
        load_value_model(tmp_path / "plain")
    with pytest.raises(ValueError, match="dtype='float16'"):
        load_value_model(path, dtype="float16")
    # A directory without tokenizer files loads with tokenizer=None.
    save_value_model(rm.replace(tokenizer=None), tmp_path / "notok")
    assert load_value_model(tmp_path / "notok").tokenizer is None


# ----------------------------------------------------------------------------- GRPO / PPO


def _record_scores(monkeypatch) -> list:
    calls = []
    original = executor_mod.RewardExecutor.score

    def recording(self, prompts, completions, columns=None):
        out = original(self, prompts, completions, columns)
        calls.append((list(prompts), list(completions), np.array(out[0])))
        return out

    monkeypatch.setattr(executor_mod.RewardExecutor, "score", recording)
    return calls


def test_reward_model_checkpoint_is_grpo_reward(rm_dir, tmp_path, monkeypatch):
    rm, path = rm_dir
    calls = _record_scores(monkeypatch)
    functions = f"rewards.functions=[{{fn: '{RM_FN}', args: {{path: '{path}'}}}}]"
    config = load_config(SMOKE, [*BASE, functions])
    assert config.rewards.num_workers == 0
    result = train.run_rl(config, run_dir=tmp_path, quiet=True)
    assert [h["step"] for h in result.history] == [1, 2] and len(calls) == 2
    prompts, completions, totals = calls[0]
    assert len(completions) == config.train.prompts_per_step * config.algorithm.group_size
    # The same texts under a scorer built directly from the in-memory model (not the file).
    want = np.asarray(RewardModelScorer(rm)(prompts, completions), np.float64)
    np.testing.assert_allclose(totals, want, rtol=1e-5, atol=1e-5)
    step1 = result.history[0]
    assert abs(step1["reward/mean"] - want.mean()) < 1e-5
    assert abs(step1["reward/reward_model_from_checkpoint"] - want.mean()) < 1e-5
    assert want.std() > 1e-3 and step1["reward/std"] > 1e-3
    # And the scorer itself: the head at the last token of an unpadded prompt + completion.
    tok = rm.tokenizer
    for p, c, got in list(zip(prompts, completions, want))[:3]:
        ref = _plain_values(rm.params, rm.config, jnp.asarray([tok.encode(p + c)]))[0, -1]
        np.testing.assert_allclose(got, float(ref), rtol=1e-5, atol=1e-5)


def test_ppo_value_model_from_reward_model(rm_dir, tmp_path, monkeypatch):
    rm, path = rm_dir
    seen = []
    original = rl.host_completions

    def recording(rollout, T):
        toks, smask = original(rollout, T)
        seen.append(
            (
                np.asarray(rollout.tokens_BL[:, :-T]),
                np.asarray(rollout.attn_BL[:, :-T]),
                toks,
                smask,
            )
        )
        return toks, smask

    monkeypatch.setattr(rl, "host_completions", recording)
    config = load_config(
        SMOKE, [*BASE, "algorithm.name=ppo", f"algorithm.value_path={path}", "algorithm.beta=0.01"]
    )
    result = train.run_rl(config, run_dir=tmp_path, quiet=True)
    assert [h["step"] for h in result.history] == [1, 2]
    for h in result.history:
        assert all(np.isfinite(v) for v in h.values()), h
    # Exact: value/mean at step 1 is the reward model's head at the state before every sampled
    # completion token (masked mean over the batch), computed here per row without padding.
    ids, mask, toks, smask = seen[0]
    values, count = 0.0, 0
    for i in range(len(ids)):
        prompt = ids[i][mask[i] == 1].tolist()
        n = int(smask[i].sum())
        seq = prompt + toks[i][:n].tolist()
        v = np.asarray(_plain_values(rm.params, rm.config, jnp.asarray([seq])))[0]
        values += float(v[len(prompt) - 1 : len(prompt) - 1 + n].sum())
        count += n
    want = values / count
    assert abs(want) > 1e-3  # a zero head would give exactly 0
    np.testing.assert_allclose(result.history[0]["value/mean"], want, rtol=1e-5, atol=1e-5)


def test_reward_model_scores_on_the_trainers_mesh(rm_dir, tmp_path, monkeypatch):
    """On a 2x2x2 trainer mesh the checkpoint scorer is loaded onto that mesh (the trainer binds
    it) and its rewards equal the single-device scorer's on the same texts."""
    rm, path = rm_dir
    calls = _record_scores(monkeypatch)
    functions = f"rewards.functions=[{{fn: '{RM_FN}', args: {{path: '{path}'}}}}]"
    mesh = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    config = load_config(SMOKE, [*BASE, functions, "train.steps=1", *mesh])
    s = rl_stage.build(config)
    ((_, fn, _),) = s.scalar_fns
    assert fn.kwargs["mesh"] is s.mesh and s.mesh.size == 8
    train.run_rl(config, run_dir=tmp_path, quiet=True)
    prompts, completions, totals = calls[0]
    want = np.asarray(RewardModelScorer(rm)(prompts, completions), np.float64)
    np.testing.assert_allclose(totals, want, rtol=1e-5, atol=1e-5)
    on_mesh = [sc for sc in fn.fn._cache.values() if sc.mesh == s.mesh]
    assert on_mesh  # the scorer the run used was built for the trainer's mesh ...
    for scorer in on_mesh:  # ... and the reward model's parameters live on it
        assert jax.tree.leaves(scorer.model.params)[0].sharding.mesh.size == 8
