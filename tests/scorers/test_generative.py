"""LLM judge: the parse rule on a table, rubric formatting, batching, and end-to-end scoring with
a fake judge of known output and with a real tiny model decoded independently."""

import pickle
import re
import string

import numpy as np
import pytest

from jaxrl_lrm import models, sampling, sharding
from jaxrl_lrm.data.tokenizer import CharTokenizer
from jaxrl_lrm.scorers import judge as judge_module
from jaxrl_lrm.scorers.judge import LLMJudge, parse_score

TOK = CharTokenizer(string.printable)
SHORT = "Q:{prompt}\nA:{completion}\n{reference_section}Score:"


@pytest.fixture(scope="module")
def judge_model():
    config = models.preset("tiny", vocab_size=TOK.vocab_size, max_seq_len=256)
    return models.init(config, 3, tokenizer=TOK)


@pytest.mark.parametrize(
    "text, want",
    [
        ("Score: 7", 0.7),
        ("score:10", 1.0),
        ("**Score:** 8.5/10", 0.85),
        ("Score = 3.", 0.3),
        ("The score: 4, revised.\nScore: 6", 0.6),  # the last match wins
        ("<score>9</score> then Score: 2", 0.2),  # ... by position, across both forms
        ("Score: 2 ... <score> 9 </score>", 0.9),
        ("Score: 15", 1.0),  # clamped to the scale
        ("Score: -3", 0.0),
        ("Score: 1e5", None),  # a number run into letters
        ("Score: 8.5x", None),
        ("Score: N", None),
        ("I give it a 7.", None),
        ("scores: 5", None),
        ("", None),
    ],
)
def test_parse_score_table(text, want):
    got = parse_score(text)
    assert got == pytest.approx(want) if want is not None else got is None


def test_parse_score_custom_scale():
    assert parse_score("Score: 3", scale=(1, 5)) == pytest.approx(0.5)
    assert parse_score("Score: 0", scale=(1, 5)) == 0.0


def test_format_prompt_default_and_reference(judge_model):
    judge = LLMJudge(judge_model)
    want = (
        "You are a strict grader. Rate the response to the question below for correctness "
        "and quality on a scale from 0 to 10.\n\nQuestion:\nWhat is 1+1?\n\n"
        "Reference answer:\n2\n\nResponse:\nIt is 2.\n\nExplain briefly, then end with a "
        'line of the form "Score: N" where N is a number from 0 to 10.\n'
    )
    assert judge.format_prompt("What is 1+1?", "It is 2.", 2) == want
    no_ref = want.replace("Reference answer:\n2\n\n", "")
    assert judge.format_prompt("What is 1+1?", "It is 2.") == no_ref
    custom = LLMJudge(
        judge_model, template="{prompt}|{completion}|{reference}|{low}-{high}", scale=(1, 5)
    )
    assert custom.format_prompt("p", "c", "r") == "p|c|r|1-5"


def _fake_generate(calls):
    """A judge whose reply is fixed by its input: 'Score: <the completion text>'."""

    def generate(
        model, prompts, *, max_new_tokens, rng, temperature, top_k, top_p, eos_id, pad_id, mesh
    ):
        calls.append((len(prompts), temperature))
        tokens = np.full((len(prompts), max_new_tokens), pad_id, np.int32)
        mask = np.zeros_like(tokens)
        for i, ids in enumerate(prompts):
            completion = re.search(r"A:(.*)\n", TOK.decode(ids)).group(1)
            reply = TOK.encode(f"ok Score: {completion}")[: max_new_tokens - 1] + [eos_id]
            tokens[i, : len(reply)] = reply
            mask[i, : len(reply)] = 1
        return sampling.Generation(tokens, np.zeros(tokens.shape, np.float32), mask)

    return generate


def test_end_to_end_with_a_known_judge(judge_model, monkeypatch):
    calls = []
    monkeypatch.setattr(judge_module.sampling, "generate", _fake_generate(calls))
    judge = LLMJudge(
        judge_model, template=SHORT, batch_size=2, max_new_tokens=24, unparseable_score=-1.0
    )
    completions = ["7", "10", "3.5", "nonsense", "42"]
    got = judge(["a", "b", "c", "d", "e"], completions, answer=["x"] * 5)
    assert got == [0.7, 1.0, 0.35, -1.0, 1.0]
    assert calls == [(2, 0.0), (2, 0.0), (1, 0.0)]  # batches of batch_size, greedy by default
    assert judge.stats == {"calls": 1, "judged": 5, "unparseable": 1}
    # The reference column reaches the rubric.
    assert "Reference answer:\nx\n\n" in judge.format_prompt("a", "7", "x")


def test_real_model_batched_equals_unbatched_and_direct_decode(judge_model):
    prompts = ["2+2?", "capital of France?", "x", "name a colour"]
    completions = ["4", "Paris", "", "blue, I think"]
    kw = dict(template=SHORT, max_new_tokens=12)
    batched = LLMJudge(judge_model, batch_size=3, **kw)
    single = LLMJudge(judge_model, batch_size=1, **kw)
    replies = batched.judgements(prompts, completions)
    assert replies == single.judgements(prompts, completions)
    # Independent path: greedy generate on each rubric prompt, decoded by hand up to EOS.
    for p, c, reply in zip(prompts, completions, replies):
        ids = TOK.encode(SHORT.format(prompt=p, completion=c, reference_section=""))
        gen = sampling.generate(
            judge_model,
            [ids],
            max_new_tokens=12,
            temperature=0.0,
            eos_id=TOK.eos_id,
            pad_id=TOK.pad_id,
        )
        toks = list(gen.tokens[0])
        if TOK.eos_id in toks:
            toks = toks[: toks.index(TOK.eos_id)]
        assert reply == TOK.decode(toks)
    scores = batched(prompts, completions)
    want = [parse_score(r) for r in replies]
    assert scores == [0.0 if w is None else w for w in want]
    assert batched.stats["unparseable"] == sum(w is None for w in want)


def test_bad_arguments(judge_model):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['question'\]"):
        LLMJudge(judge_model, template="{question}")
    with pytest.raises(ValueError, match=r"scale=\(5, 5\)"):
        LLMJudge(judge_model, scale=(5, 5))
    with pytest.raises(ValueError, match="batch_size=0"):
        LLMJudge(judge_model, batch_size=0)
    with pytest.raises(ValueError, match="tokenizer=None"):
        LLMJudge(judge_model.replace(tokenizer=None))
    judge = LLMJudge(judge_model, template="{prompt}{reference}", max_new_tokens=8)
    with pytest.raises(ValueError, match="column 'answer' was not passed"):
        judge(["p"], ["c"])
    with pytest.raises(ValueError, match="has 1 entries for 2 completions"):
        judge(["p", "q"], ["c", "d"], answer=["x"])
    with pytest.raises(ValueError, match="judge prompt 0 has 250 tokens"):
        judge(["p" * 249], ["c"], answer=["r"])
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        judge(["p", "q"], ["c"], answer=["x"])


def test_judge_from_checkpoint(judge_model, tmp_path):
    models.save_pretrained(judge_model, tmp_path / "judge")
    fn = judge_module.llm_judge_from_checkpoint
    kw = dict(template=SHORT, max_new_tokens=6, batch_size=2)
    got = fn(["a", "b"], ["c", "d"], answer=["1", "2"], path=str(tmp_path / "judge"), **kw)
    assert got == LLMJudge(judge_model, **kw)(["a", "b"], ["c", "d"])
    assert len(fn._cache) == 1
    fn(["a"], ["c"], path=str(tmp_path / "judge"), **kw)
    assert len(fn._cache) == 1
    assert pickle.loads(pickle.dumps(fn)) is fn
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['beam'\]"):
        fn.scorer(str(tmp_path / "judge"), beam=4)


def test_judge_on_a_mesh_matches_single_device(judge_model):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    placed = sharding.shard_model(judge_model, mesh)
    prompts, completions = ["2+2?", "x", "name a colour"], ["4", "", "blue"]
    kw = dict(template=SHORT, max_new_tokens=8, batch_size=3)
    assert LLMJudge(placed, mesh=mesh, **kw).judgements(prompts, completions) == LLMJudge(
        judge_model, **kw
    ).judgements(prompts, completions)


def test_parse_score_is_host_only():
    from jaxrl_lrm.rewards import rubric

    assert parse_score is rubric.parse_score
