"""The multi-turn sampler (`sampling_turns` + `episodes`): log-probs against a full forward
pass of the final transcript, the token invariant over many random episodes, rows advancing
independently (a row alone equals the row in a batch), per-row stop sequences, budgets."""

import dataclasses
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import episodes, models
from jaxrl_lrm.envs import Step
from jaxrl_lrm.envs import template as tmpl
from jaxrl_lrm.models import transformer

PROMPTS = [[5, 9, 200, 17], [3], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [100, 101]]
T, OBS = 64, 6


class ByteTokenizer:
    """Bytes as tokens (the tiny model's vocabulary is 256)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1", "replace"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("latin-1")


TOK = ByteTokenizer()
SHORT = tmpl.ObservationTemplate(prefix="<", suffix=">")  # a 2-token wrapper


@dataclasses.dataclass
class RandomEpisode:
    """Answers each turn with random text of random length, ends after a random number of turns;
    records what it saw and said so the test can rebuild the transcript independently."""

    rng: random.Random
    max_turns: int
    seen: list = dataclasses.field(default_factory=list)
    said: list = dataclasses.field(default_factory=list)

    def step(self, turn: str) -> Step:
        self.seen.append(turn)
        reward = round(self.rng.uniform(-1, 1), 3)
        if len(self.seen) >= self.max_turns:
            return Step(observation=None, reward=reward, done=True)
        text = "".join(self.rng.choice("abcdefgh") for _ in range(self.rng.randint(0, 2 * OBS)))
        self.said.append(text)
        return Step(observation=text, reward=reward)


FAVOURITE = 250


@pytest.fixture(scope="module")
def model():
    """The tiny model with one token made frequent (its output column along the mean final
    hidden state), so that rows stop at it many times in an episode."""
    m = models.init("tiny", 0)
    seq = np.random.default_rng(0).integers(0, 256, (8, 64)).astype(np.int32)
    h = np.asarray(transformer.forward_hidden(m.params, m.config, jnp.asarray(seq))[0])
    mu = h.reshape(-1, h.shape[-1]).mean(0)
    params = dict(m.params)
    params["lm_head"] = params["lm_head"].at[:, FAVOURITE].set(2.0 * mu / np.linalg.norm(mu))
    return dataclasses.replace(m, params=params)


def _stops(model, seed, temperature):
    """Per-row stop sequences the model is sure to write: tokens of a free run with the same
    key (the run with stops repeats it up to the first stop), at random places: the frequent
    token for rows 0 and 1, one token of the free run for row 2, a bigram of it for row 3."""
    eps = [RandomEpisode(random.Random(0), 1) for _ in PROMPTS]
    free = episodes.run_episodes(model, TOK, PROMPTS, eps, stop_ids=[[-1, -1]] * 4,
                                 max_tokens=T, max_tool_output_tokens=OBS,
                                 rng=jax.random.key(seed), temperature=temperature, template=SHORT)  # fmt: skip
    row, at = (lambda b: free.tokens[b].tolist()), random.Random(seed).sample(range(16), 4)
    return [[-1, FAVOURITE], [-1, FAVOURITE], [-1, row(2)[at[2]]], row(3)[at[3] : at[3] + 2]]


def _run(model, seed, temperature=0.8, prompts=PROMPTS, rows=None):
    rows = range(len(prompts)) if rows is None else rows
    stops = _stops(model, seed, temperature)
    eps = [RandomEpisode(random.Random(1000 * seed + b), 1 + (seed + b) % 5) for b in rows]
    ep = episodes.run_episodes(model, TOK, prompts, eps, stop_ids=[stops[b] for b in rows],
                               max_tokens=T, max_tool_output_tokens=OBS,
                               rng=jax.random.key(seed), temperature=temperature, template=SHORT)  # fmt: skip
    return ep, eps, [[t for t in stops[b] if t >= 0] for b in rows]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_logprobs_equal_a_full_forward_of_the_final_transcript(model):
    temp, checked, multi = 0.8, 0, 0
    for seed in range(4):
        ep, _, _ = _run(model, seed, temp)
        for b, prompt in enumerate(PROMPTS):
            n = ep.lengths[b]
            seq = np.zeros((1, 96), np.int32)  # right filler cannot reach earlier positions
            seq[0, : len(prompt) + n] = [*prompt, *ep.tokens[b, :n]]
            logits = np.asarray(models.logits(model, seq))[0]
            want = _log_softmax(logits / temp)[len(prompt) - 1 : len(prompt) + n - 1]
            want = np.take_along_axis(want, ep.tokens[b, :n, None].astype(int), axis=1)[:, 0]
            s = ep.sampled[b, :n] == 1
            np.testing.assert_allclose(ep.logprobs[b, :n][s], want[s], atol=1e-5, rtol=0)
            assert np.all(ep.logprobs[b, n:] == 0) and np.all(ep.logprobs[b, :n][~s] == 0)
            checked += int(s.sum())
            multi += sum(k == "observation" for k, _, _ in ep.segments[b]) >= 2
    assert checked > 200 and multi >= 4  # rows resumed at least twice


def test_token_invariant_over_many_random_episodes(model):
    lengths = set()
    for seed in range(12):
        ep, eps, stops = _run(model, seed)
        for b, e in enumerate(eps):
            n, segs = ep.lengths[b], ep.segments[b]
            assert segs[0][1] == 0 and segs[-1][2] == n
            assert all(x[2] == y[1] for x, y in zip(segs, segs[1:]))  # contiguous
            kinds = [k for k, _, _ in segs]
            assert kinds == ["sampled", "observation"] * (len(kinds) // 2) + ["sampled"] * (
                len(kinds) % 2
            )
            obs = [ep.tokens[b, s:t].tolist() for k, s, t in segs if k == "observation"]
            said = [tmpl.observation_tokens(TOK, SHORT, x, OBS)[0] for x in e.said]
            assert obs == said[: len(obs)]
            if len(said) > len(obs):  # only an observation without room for a reply is dropped
                assert len(said) == len(obs) + 1 and n + len(said[-1]) >= T
            turns = [ep.tokens[b, s:t].tolist() for k, s, t in segs if k == "sampled"]
            assert [TOK.decode(t) for t in turns] == e.seen  # the env saw exactly these
            stop = stops[b]
            for t in turns[:-1]:  # each turn that got an answer ended at its first stop
                assert t[-len(stop) :] == stop
                assert all(t[i : i + len(stop)] != stop for i in range(len(t) - len(stop)))
            np.testing.assert_array_equal(ep.sampled[b, :n] + ep.observation[b, :n], 1)
            assert np.all(ep.sampled[b, n:] + ep.observation[b, n:] == 0)
            ends = [t - 1 for k, _, t in segs if k == "sampled"]
            assert np.count_nonzero(ep.turn_rewards[b]) <= len(ends)
            assert set(np.flatnonzero(ep.turn_rewards[b])) <= set(ends)
            assert ep.turns[b] == len(e.seen) and n <= T
            lengths.update(s for k, s, _ in segs if k == "observation")
    assert len(lengths) > 10  # observations went in at many different row offsets


@pytest.mark.slow  # a greedy compilation of its own (~50 s on 2 busy cores)
def test_rows_advance_independently(model):
    """Greedy, the same rows in another order with other neighbours give the same episodes:
    nothing of one row's offsets, stops or observations leaks into another's."""
    batch, _, _ = _run(model, 5, temperature=0.0)
    order = [2, 0, 3, 1]
    moved, _, _ = _run(model, 5, temperature=0.0, prompts=[PROMPTS[b] for b in order], rows=order)
    for i, b in enumerate(order):
        assert moved.lengths[i] == batch.lengths[b] and moved.segments[i] == batch.segments[b]
        np.testing.assert_array_equal(moved.tokens[i], batch.tokens[b])
        np.testing.assert_allclose(moved.logprobs[i], batch.logprobs[b], atol=1e-6)
    assert len(set(map(len, batch.segments))) > 1  # the rows went through different rounds


def test_budget_and_errors(model):
    eps = [RandomEpisode(random.Random(0), 100) for _ in PROMPTS]
    ep = episodes.run_episodes(model, TOK, PROMPTS, eps, stop_ids=[-1, 7], max_tokens=T,
                               max_tool_output_tokens=OBS, rng=jax.random.key(1),
                               temperature=0.8, template=SHORT)  # fmt: skip
    assert np.all(ep.lengths <= T) and ep.lengths.max() >= T - 2 * OBS
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        episodes.run_episodes(model, TOK, PROMPTS, eps, stop_ids=[1], max_tokens=600,
                              max_tool_output_tokens=OBS, rng=jax.random.key(1))  # fmt: skip
    with pytest.raises(ValueError, match="3 episodes for 4 prompts"):
        episodes.run_episodes(model, TOK, PROMPTS, eps[:3], stop_ids=[1], max_tokens=T,
                              max_tool_output_tokens=OBS, rng=jax.random.key(1))  # fmt: skip
