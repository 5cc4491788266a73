"""Reward-model and PRM scorers against a direct unpadded forward pass and hand-computed
step positions."""

import pickle
import string
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models, scorers, sharding
from jaxrl_lrm.data.tokenizer import CharTokenizer, HFTokenizer
from jaxrl_lrm.models import transformer
from jaxrl_lrm.scorers.reward_model import load_reward_model, save_reward_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOK = CharTokenizer(string.printable)


def _rm(seed=0):
    """Tiny model with a random (non-zero) value head, so scores differ between inputs."""
    m = models.init("tiny", seed, tokenizer=TOK)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    head = {"w": jax.random.normal(k1, (m.config.d_model,)), "b": jax.random.normal(k2, ())}
    return m.replace(params={**m.params, "value_head": head})


@pytest.fixture(scope="module")
def rm():
    return _rm()


def _direct_values(model, ids):
    """Reference: plain causal forward over one unpadded sequence, head at every token."""
    tokens = jnp.asarray([ids], jnp.int32)
    return np.asarray(_plain_forward(model.params, model.config, tokens))[0]


@jax.jit(static_argnums=1)
def _plain_forward(params, config, tokens_1T):
    hidden, _ = transformer.forward_hidden(params, config, tokens_1T)  # no mask, no padding
    return transformer.value_head(params, hidden)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def test_token_offsets_char_and_hf():
    assert scorers.tokenize_with_offsets(TOK, "ab\nc") == (
        TOK.encode("ab\nc"),
        [(0, 1), (1, 2), (2, 3), (3, 4)],
    )
    hf = HFTokenizer.from_pretrained(FIXTURES / "qwen2")
    text = "Step 1: add 2 and 3.\n\nStep 2: so 5."
    ids, offsets = scorers.tokenize_with_offsets(hf, text)
    assert ids == hf.encode(text)
    assert scorers.token_offsets(hf.tokenizer, text) == offsets  # a raw transformers tokenizer too
    # Each token decodes to exactly the characters its span covers.
    for i, (s, e) in zip(ids, offsets):
        assert hf.decode([i]) == text[s:e]
    with pytest.raises(ValueError, match="tokenizer=3"):
        scorers.token_offsets(3, "x")


def test_reward_model_matches_direct_forward_on_ragged_batch(rm):
    prompts = ["What is 2+2?", "hi", "A longer prompt with several words in it.", "q", "x" * 20]
    completions = ["4", "hello there\n\nbye", "", "an answer", "y"]
    scorer = scorers.RewardModelScorer(rm, batch_size=2, scale=2.0, shift=0.25)
    got = scorer(prompts, completions, answer=["4"] * 5)  # dataset columns are ignored
    want = [
        2.0 * (_direct_values(rm, TOK.encode(p + c))[-1] - 0.25)
        for p, c in zip(prompts, completions)
    ]
    # Two float32 computations whose matmul shapes differ (left-padded batch of 2 vs one
    # unpadded row) sum in different orders: scores reach |40|, so the bound is relative.
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)
    assert len(set(np.round(got, 4))) == 5  # a real signal, not a constant
    assert scorer.stats == {"scored": 5, "truncated": 0}
    # Batched and one-by-one agree; ragged lengths in the same bucket reuse the compilation.
    one = scorers.RewardModelScorer(rm, batch_size=1, scale=2.0, shift=0.25)
    np.testing.assert_allclose(one(prompts, completions), got, atol=1e-5)
    eos = scorers.RewardModelScorer(rm, batch_size=2, append_eos=True)(prompts[:2], completions[:2])
    want = [
        _direct_values(rm, TOK.encode(p + c) + [TOK.eos_id])[-1]
        for p, c in zip(prompts[:2], completions[:2])
    ]
    np.testing.assert_allclose(eos, want, rtol=2e-6, atol=1e-5)  # as above
    before = scorer.forward._cache_size()
    scorer(["a" * 20, "b" * 25], ["c", "d"])  # lengths 21 and 26: the 32 bucket, seen before
    assert scorer.forward._cache_size() == before


@pytest.fixture(scope="module")
def short(rm):
    return rm.replace(config=rm.config.replace(max_seq_len=16))  # same weights, short context


def test_reward_model_truncates_to_max_seq_len(short):
    scorer = scorers.RewardModelScorer(short, batch_size=2)
    prompt, completion = "p" * 10, "the completion"
    got = scorer([prompt, "a"], [completion, "b"])
    seq = TOK.encode(prompt + completion)[-16:]
    np.testing.assert_allclose(got[0], _direct_values(short, seq)[-1], atol=1e-5)
    np.testing.assert_allclose(got[1], _direct_values(short, TOK.encode("ab"))[-1], atol=1e-5)
    assert scorer.stats["truncated"] == 1


def test_prm_step_positions_and_scores(rm):
    prm = scorers.PRMScorer(rm, step_splitter="blank_line", batch_size=2)
    prompt, completion = "Q: 1+2?\n", "1+2\n\n= 3\n\n  so 3.  "
    ids, spans, offsets, positions = prm.step_positions(prompt, completion)
    # Hand-computed: prompt is 8 chars; steps "1+2" [0,3), "= 3" [5,8), "so 3." [12,17);
    # their last characters are completion indices 2, 7, 16.
    assert spans == [(0, 3), (5, 8), (12, 17)]
    assert positions.tolist() == [8 + 2, 8 + 7, 8 + 16]
    assert ids == TOK.encode(prompt + completion) and len(offsets) == len(completion)

    prompts = [prompt, "other", "z"]
    completions = [completion, "one step only", "a\n\nb"]
    results = prm.score(prompts, completions)
    for r, p, c in zip(results, prompts, completions):
        values = _direct_values(rm, TOK.encode(p + c))
        np.testing.assert_allclose(r.step_scores, _sigmoid(values[r.positions]), atol=1e-6)
        want = np.zeros(len(c), np.float32)
        want[r.positions - len(p)] = r.step_scores
        np.testing.assert_array_equal(r.token_rewards, want)
    assert [len(r.step_scores) for r in results] == [3, 1, 2]
    assert results[2].positions.tolist() == [1, 4]

    s = [r.step_scores.astype(np.float64) for r in results]
    for reduction, ref in (("min", np.min), ("last", lambda x: x[-1]), ("mean", np.mean)):
        got = scorers.PRMScorer(rm, reduction=reduction)(prompts, completions, answer=[1, 2, 3])
        np.testing.assert_allclose(got, [ref(x) for x in s], atol=1e-6)


def test_prm_modes_empty_and_extension_point(rm):
    prm = scorers.PRMScorer(rm, step_splitter="newline", empty_score=-1.0)
    ids, spans, _, positions = prm.step_positions("P", "a\nbb\n\nccc")
    assert spans == [(0, 1), (2, 4), (6, 9)] and positions.tolist() == [1, 4, 9]
    assert prm(["P", "Q"], ["", "   \n"]) == [-1.0, -1.0]
    empty = prm.score(["P"], [""])[0]
    assert empty.step_scores.shape == (0,) and empty.token_rewards.shape == (0,)
    # dense.py's extension point: (prompt, steps) -> one score per step.
    steps = ["x = 1", "y = 2", "so 3"]
    got = prm.step_scorer("P", steps)
    want = prm.score(["P"], ["\n".join(steps)])[0].step_scores
    np.testing.assert_allclose(got, want, atol=0)
    with pytest.raises(ValueError, match="2 steps re-split into 3"):
        prm.step_scorer("P", ["a\nb", "c"])


def test_prm_truncates_prompt_not_completion(short):
    model = short
    prm = scorers.PRMScorer(model, batch_size=2)
    ids, _, _, positions = prm.step_positions("p" * 20, "ab\n\ncd")
    assert len(ids) == 16 and positions.tolist() == [11, 15]
    r = prm.score(["p" * 20], ["ab\n\ncd"])[0]
    np.testing.assert_allclose(
        r.step_scores, _sigmoid(_direct_values(model, ids)[[11, 15]]), atol=1e-6
    )
    with pytest.raises(ValueError, match="completion has 17 tokens"):
        prm.score(["p"], ["c" * 17])


def test_bad_arguments(rm):
    bare = rm.replace(params={k: v for k, v in rm.params.items() if k != "value_head"})
    with pytest.raises(ValueError, match="no value_head"):
        scorers.RewardModelScorer(bare)
    with pytest.raises(ValueError, match="no value_head"):
        scorers.PRMScorer(bare)
    with pytest.raises(ValueError, match="reduction='max'"):
        scorers.PRMScorer(rm, reduction="max")
    with pytest.raises(ValueError, match="step_splitter='para'"):
        scorers.PRMScorer(rm, step_splitter="para")
    with pytest.raises(ValueError, match="batch_size=0"):
        scorers.RewardModelScorer(rm, batch_size=0)
    with pytest.raises(ValueError, match="scale=nan"):
        scorers.RewardModelScorer(rm, scale=float("nan"))
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        scorers.RewardModelScorer(rm)(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="both empty"):
        scorers.RewardModelScorer(rm)([""], [""])
    with pytest.raises(ValueError, match="tokenizer=None"):
        scorers.RewardModelScorer(rm.replace(tokenizer=None))


def test_checkpoint_factory_loads_once_and_pickles_by_reference(rm, tmp_path):
    save_reward_model(rm, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    np.testing.assert_array_equal(loaded.params["value_head"]["w"], rm.params["value_head"]["w"])
    fn = scorers.reward_model_from_checkpoint
    prompts, completions = ["What is 2+2?", "hi"], ["4", "five"]
    got = fn(
        prompts, completions, answer=["4", "4"], path=str(tmp_path / "rm"), batch_size=2, shift=1.0
    )
    want = [_direct_values(rm, TOK.encode(p + c))[-1] - 1.0 for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    n = len(fn._cache)
    fn(prompts, completions, path=str(tmp_path / "rm"), batch_size=2, shift=1.0)
    assert len(fn._cache) == n  # cached: no second load
    assert pickle.loads(pickle.dumps(fn)) is fn
    prm = scorers.prm_from_checkpoint(
        ["q"], ["a\n\nb"], path=str(tmp_path / "rm"), reduction="last"
    )
    np.testing.assert_allclose(
        prm, scorers.PRMScorer(rm, reduction="last")(["q"], ["a\n\nb"]), atol=1e-6
    )
    with pytest.raises(ValueError, match="needs path="):
        fn(prompts, completions)
    with pytest.raises(ValueError, match="value_head.safetensors' does not exist"):
        load_reward_model(FIXTURES / "qwen2")


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)])
def test_scorers_on_a_mesh_match_single_device(rm, shape, tmp_path):
    mesh = sharding.make_mesh(*shape)
    placed = sharding.shard_model(rm, mesh)
    prompts = ["What is 2+2?", "hi", "A longer prompt.", "q", "x" * 20]
    completions = ["4", "hello\n\nbye", "one\n\ntwo\n\nthree", "an answer", "y"]
    kw = dict(batch_size=3, scale=2.0, shift=0.25)  # 3 rows padded to the (data, fsdp) size
    single = scorers.RewardModelScorer(rm, **kw)(prompts, completions)
    sharded = scorers.RewardModelScorer(placed, mesh=mesh, **kw)
    np.testing.assert_allclose(sharded(prompts, completions), single, rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(
        scorers.PRMScorer(placed, mesh=mesh, batch_size=3)(prompts, completions),
        scorers.PRMScorer(rm, batch_size=3)(prompts, completions),
        atol=1e-6,
    )
    # The factory loads the checkpoint onto the mesh it is given.
    save_reward_model(rm, tmp_path / "rm")
    fn = scorers.reward_model_from_checkpoint
    got = fn(prompts, completions, path=str(tmp_path / "rm"), mesh=mesh, **kw)
    np.testing.assert_allclose(got, single, rtol=2e-6, atol=1e-5)
    loaded = fn.scorer(str(tmp_path / "rm"), mesh=mesh, **kw)
    assert loaded.mesh is mesh
    assert loaded.model.params["embed"].sharding.mesh == mesh


def test_each_scorer_owns_its_forward(rm):
    a, b = scorers.RewardModelScorer(rm), scorers.PRMScorer(rm)
    assert a.forward is not b.forward
    assert not hasattr(scorers.reward_model, "_values_jit")
