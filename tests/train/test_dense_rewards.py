"""Token-level (dense) rewards: character -> token placement, their entry into the advantage
estimators (against NumPy GAE / REINFORCE++ / group baselines), and the trainer end to end."""

import string
from pathlib import Path

import dense_toy
import jax
import numpy as np
import pytest

from jaxrl_lrm import algorithms, models, train
from jaxrl_lrm import scorers as mb
from jaxrl_lrm.config import AlgorithmSection, load_config
from jaxrl_lrm.data.tokenizer import CharTokenizer, HFTokenizer
from jaxrl_lrm.rewards import dense
from jaxrl_lrm.train import host, rl, setup

ROOT = Path(__file__).resolve().parents[2]
QWEN2 = ROOT / "tests" / "fixtures" / "qwen2"


# ----------------------------------------------------------------------------- placement


def test_char_tokenizer_placement_skips_special_tokens():
    tok = CharTokenizer("ab1\n")  # ids: 0 pad, 1 eos, 2 bos, then a=3, b=4, 1=5, \n=6
    ids = [3, 5, tok.bos_id, 4, 6, 5, tok.eos_id]  # "a1" <bos> "b\n1" <eos>
    assert tok.decode(ids) == "a1b\n1"
    pairs = [(2, 1.0), (3, 2.0), (5, 0.5), (5, 0.25), (1, -1.0)]
    got = dense.char_rewards_to_tokens(tok, ids, pairs)
    # char 1 '1' -> token 1; char 2 'b' -> token 3 (the bos token adds no characters);
    # char 4 '1' -> token 5 (twice, summed); char 0 'a' -> token 0; eos never rewarded
    np.testing.assert_array_equal(got, np.float32([-1.0, 1.0, 0, 2.0, 0, 0.75, 0]))


def test_hf_placement_multi_char_and_split_characters():
    hf = HFTokenizer.from_pretrained(QWEN2)
    text = "Step 1: add 12 and 30.\n\nStep 2: 42 \u2713 caf\u00e9"
    ids = hf.encode(text)
    assert hf.decode(ids) == text
    # The fixture's vocabulary: " and" is one token (chars 14..17, token 14); the check mark
    # (char 35) is three byte tokens 32..34, the e-acute (char 40) two byte tokens 39..40.
    assert hf.decode([ids[14]]) == " and" and len(ids) == 41
    pairs = [(15, 1.0), (18, 2.0), (19, 4.0), (36, 8.0), (37, 16.0), (41, 32.0)]
    want = np.zeros(41, np.float32)
    want[14] = 1.0 + 2.0  # ' ' and 'd' of " and"
    want[15] = 4.0  # the ' ' after it
    want[34] = 8.0  # the check mark: the byte token that completes it
    want[35] = 16.0
    want[40] = 32.0  # the last character, completed by the last token
    np.testing.assert_array_equal(dense.char_rewards_to_tokens(hf, ids, pairs), want)
    # Every position against the tokenizer's own offset mapping: the last token whose span
    # holds character c - 1 (for a split character all its byte tokens hold it).
    _, offsets = mb.tokenize_with_offsets(hf, text)
    for c in range(1, len(text) + 1):
        ref = max(k for k, (s, e) in enumerate(offsets) if s <= c - 1 < e)
        got = dense.char_rewards_to_tokens(hf, ids, [(c, 1.0)])
        assert np.flatnonzero(got).tolist() == [ref], c


@pytest.mark.parametrize(
    "pair", [(0, 1.0), (6, 1.0), (2.0, 1.0), (True, 1.0), (2, float("nan")), (2, "1"), (2,), "ab"]
)
def test_bad_pairs_raise(pair):
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match="char_end|reward|pair"):
        dense.char_rewards_to_tokens(tok, tok.encode("abbab"), [pair])


def test_step_end_rewards_and_protocol():
    text = "first step\n\n  second\n\n\nthird  "
    assert dense.step_end_rewards(text, [0.1, 0.2, 0.5]) == [
        (10, pytest.approx(0.1)),
        (20, pytest.approx(0.2)),
        (28, pytest.approx(0.5)),
    ]
    assert dense.step_end_rewards("a\nb", [1, 2], mode="newline") == [(1, 1.0), (3, 2.0)]
    with pytest.raises(ValueError, match="2 step_scores for 3 steps"):
        dense.step_end_rewards(text, [0.1, 0.2])
    assert isinstance(dense_toy.every_char, dense.TokenLevelReward)
    assert dense.is_token_level(setup._Bound(dense_toy.every_char, {}))
    assert not dense.is_token_level(setup._Bound(len, {})) and not dense.is_token_level(len)


def test_prm_token_level_face_matches_its_token_rewards():
    tok = CharTokenizer(string.printable)
    m = models.init("tiny", 0, tokenizer=tok)
    k1, k2 = jax.random.split(jax.random.key(1))
    head = {"w": jax.random.normal(k1, (m.config.d_model,)), "b": jax.random.normal(k2, ())}
    prm = mb.PRMScorer(m.replace(params={**m.params, "value_head": head}), batch_size=2)
    prompts, comps = ["1+1?", "2+2?"], ["add them\n\nso 2", "it is 4"]
    fn = prm.as_token_level()
    assert dense.is_token_level(fn)
    got = fn(prompts, comps)
    results = prm.score(prompts, comps)
    assert [[e for e, _ in row] for row in got] == [[8, 14], [7]]  # hand-counted step ends
    for row, res, comp in zip(got, results, comps):
        np.testing.assert_allclose([s for _, s in row], res.step_scores, rtol=1e-6)
        placed = dense.char_rewards_to_tokens(tok, tok.encode(comp), row)
        np.testing.assert_allclose(placed, res.token_rewards, rtol=1e-6)


def test_dense_rewards_batch_and_the_session_split(tmp_path):
    tok = CharTokenizer("01")  # '0' = 3, '1' = 4
    toks = np.array([[4, 3, 4, 1, 0], [3, 999, 4, 4, 0], [4, 4, 4, 4, 4]])
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    comps = ["101", "011", "11"]  # id 999 is past the vocabulary: decodes to nothing
    d, sums, errors, _ = host.dense_rewards(
        tok, toks, mask, comps, ["p"] * 3, {}, [("ones", dense_toy.every_char, 0.5)]
    )
    want = 0.5 * np.float32([[1, 0, 1, 0, 0], [0, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(d, want)
    np.testing.assert_array_equal(sums["ones"], [2, 2, 2])
    assert errors == {}

    # a token-level function that raises gives 0 for the batch and is counted, not fatal
    def broken(prompts, completions, **_):
        raise RuntimeError("broken on purpose")

    broken.token_level = True
    d, sums, errors, tracebacks = host.dense_rewards(
        tok,
        toks,
        mask,
        comps,
        ["p"] * 3,
        {},
        [("broken", broken, 1.0), ("ones", dense_toy.every_char, 0.5)],
    )
    np.testing.assert_array_equal(d, want)
    assert errors == {"errors/broken": 3.0} and not sums["broken"].any()
    assert "broken on purpose" in tracebacks["broken"]

    # scalar functions go to the executor; token-level ones stay in the trainer's process
    cfg = load_config(
        ROOT / "configs" / "smoke.yaml",
        [
            "mesh.data=1",
            "mesh.fsdp=1",
            "mesh.tensor=1",
            "rewards.functions=[{fn: task}, {fn: 'dense_toy:every_char', args: {}}]",
        ],
    )
    task = setup.resolve_task(cfg.data.task, cfg.data.task_args)
    scalar, token = host.split_reward_fns(setup.build_rewards(cfg, task))
    assert [t[0] for t in scalar] == ["task"]
    assert [t[0] for t in token] == ["every_char"]


# ----------------------------------------------------------------------------- advantages


def _np_returns(r, mask, gamma=1.0, values=None, lam=1.0):
    """Backwards over the masked positions: delta = r + gamma V' - V, A = delta + gamma lam A'."""
    B, T = r.shape
    values = np.zeros_like(r) if values is None else values
    adv = np.zeros_like(r, dtype=np.float64)
    for b in range(B):
        a_next = v_next = 0.0
        for t in reversed(range(T)):
            if mask[b, t]:
                delta = r[b, t] + gamma * v_next - values[b, t]
                a_next = delta + gamma * lam * a_next
                v_next = values[b, t]
                adv[b, t] = a_next
    return adv


def _np_whiten(x, mask):
    v = x[mask > 0]
    return np.where(mask > 0, (x - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8), 0.0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    B, T = 4, 6
    mask = np.ones((B, T), np.float32)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return dict(
        rewards=rng.normal(size=B).astype(np.float32),
        mask=mask,
        kl=rng.normal(size=(B, T)).astype(np.float32) * mask,
        values=rng.normal(size=(B, T)).astype(np.float32) * mask,
        dense=rng.normal(size=(B, T)).astype(np.float32) * mask,
    )


def _token_rewards(b, beta):
    r = b["dense"] - beta * b["kl"]
    for i, row in enumerate(b["mask"]):
        r[i, np.flatnonzero(row)[-1]] += b["rewards"][i]
    return r * b["mask"]


def test_reinforce_pp_and_gae_with_token_rewards(batch):
    b, beta = batch, 0.1
    r = _token_rewards(b, beta)
    spec = algorithms.resolve(AlgorithmSection(name="reinforce_pp", beta=beta))
    got = algorithms.advantages(
        spec, b["rewards"], b["mask"], kl_BT=b["kl"], token_rewards_BT=b["dense"]
    ).adv_BT
    np.testing.assert_allclose(
        got, _np_whiten(_np_returns(r, b["mask"]), b["mask"]), rtol=1e-4, atol=1e-5
    )
    spec = algorithms.resolve(AlgorithmSection(name="ppo", beta=beta, gamma=0.9, lam=0.8))
    out = algorithms.advantages(
        spec,
        b["rewards"],
        b["mask"],
        kl_BT=b["kl"],
        values_BT=b["values"],
        token_rewards_BT=b["dense"],
    )
    adv, ret = out.adv_BT, out.returns_BT
    ref = _np_returns(r, b["mask"], 0.9, b["values"], 0.8)
    np.testing.assert_allclose(ret, (ref + b["values"]) * b["mask"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adv, _np_whiten(ref, b["mask"]), rtol=1e-4, atol=1e-5)
    # jitted (as inside the update) it agrees; no dense term is the old estimator exactly
    jit = jax.jit(
        lambda *a: algorithms.advantages(
            spec, *a[:2], kl_BT=a[2], values_BT=a[3], beta=a[4], token_rewards_BT=a[5]
        )
    )(b["rewards"], b["mask"], b["kl"], b["values"], np.float32(beta), b["dense"])
    np.testing.assert_allclose(jit.adv_BT, adv, rtol=1e-5, atol=1e-6)
    plain = algorithms.advantages(
        spec, b["rewards"], b["mask"], kl_BT=b["kl"], values_BT=b["values"]
    )
    zeros = algorithms.advantages(
        spec,
        b["rewards"],
        b["mask"],
        kl_BT=b["kl"],
        values_BT=b["values"],
        token_rewards_BT=0 * b["dense"],
    )
    np.testing.assert_array_equal(plain.adv_BT, zeros.adv_BT)


def test_group_estimators_sum_dense_rewards_per_row(batch):
    b = batch
    total = b["rewards"] + (b["dense"] * b["mask"]).sum(axis=1)
    g = total.reshape(-1, 2)
    spec = algorithms.resolve(AlgorithmSection(name="grpo", group_size=2))
    got = algorithms.advantages(spec, b["rewards"], b["mask"], token_rewards_BT=b["dense"])
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got.adv_BT, want.reshape(-1, 1) * b["mask"], rtol=1e-4, atol=1e-5)
    spec = algorithms.resolve(AlgorithmSection(name="rloo", group_size=2))
    got = algorithms.advantages(spec, b["rewards"], b["mask"], token_rewards_BT=b["dense"])
    np.testing.assert_allclose(
        got.adv_BT, (g - g[:, ::-1]).reshape(-1, 1) * b["mask"], rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------- end to end


def _train(tmp_path, monkeypatch, *extra):
    """Two PPO steps on the smoke config; records what each step sends to the device."""
    seen = {"scores": [], "tokens": []}
    to_device, host_completions = rl.to_device, rl.host_completions

    def rec_to_device(scores, mesh, keep_N=None):
        seen["scores"].append(scores)
        return to_device(scores, mesh, keep_N)

    def rec_host(rollout, T):
        seen["tokens"].append(out := host_completions(rollout, T))
        return out

    monkeypatch.setattr(rl, "to_device", rec_to_device)
    monkeypatch.setattr(rl, "host_completions", rec_host)
    cfg = load_config(
        ROOT / "configs" / "smoke.yaml",
        [
            "mesh.data=1",
            "mesh.fsdp=1",
            "mesh.tensor=1",
            "train.eval_every=0",
            "train.steps=2",
            "algorithm.name=ppo",
            "algorithm.beta=0.0",
            *extra,
        ],
    )
    history = train.run_rl(cfg, run_dir=tmp_path, quiet=True).history
    return history, seen


def test_trainer_feeds_dense_rewards_to_gae(tmp_path, monkeypatch):
    dense_toy.CALLS.clear()
    history, seen = _train(
        tmp_path / "dense",
        monkeypatch,
        "rewards.functions=[{fn: task}, {fn: 'dense_toy:every_char', weight: 0.5}]",
    )
    assert len(dense_toy.CALLS) == 2 and len(seen["scores"]) == 2
    tok = CharTokenizer(setup.resolve_task("addition", {"digits": 2}).alphabet)
    for h, comps, sc, (toks, smask) in zip(
        history, dense_toy.CALLS, seen["scores"], seen["tokens"]
    ):
        assert comps == sc.completions
        dense_arg = sc.dense_NT
        assert h["reward/dense_mean"] == pytest.approx(
            np.mean([0.5 * c.count("1") for c in comps]), abs=1e-6
        )
        # independently: 0.5 on every sampled token that decodes to '1', 0 elsewhere
        want = np.zeros(toks.shape, np.float32)
        for i, j in zip(*np.nonzero(smask)):
            if tok.decode([int(toks[i, j])]) == "1":
                want[i, j] = 0.5
        np.testing.assert_array_equal(dense_arg, want)
        assert want.sum() > 0  # the random policy writes some '1's: the test has teeth
    base, seen0 = _train(tmp_path / "plain", monkeypatch, "rewards.functions=[{fn: task}]")
    assert "reward/dense_mean" not in base[0] and seen0["scores"][0].dense_NT is None
    assert seen0["scores"][0].completions == dense_toy.CALLS[0]  # same samples at step 1 ...
    # ... other returns: the value model's loss against them differs
    assert history[0]["value/loss"] != pytest.approx(base[0]["value/loss"])
