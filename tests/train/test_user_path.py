"""The user's path with their own data: a system prompt and conversational rows through the
chat template, overlong prompts filtered at load with an exact resume, and `jaxrl-lrm eval`
with the CONFIG it is given and an explicit correctness function."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest

from jaxrl_lrm import train
from jaxrl_lrm.cli import main as cli_main
from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.data.overlong import KeptSource
from jaxrl_lrm.data.tokenizer import CharTokenizer
from jaxrl_lrm.offline import data as offline_data
from jaxrl_lrm.train import host, rl_stage

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
QWEN2 = ROOT / "tests" / "fixtures" / "qwen2"
ONE_DEVICE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
_TIMING = ("time/", "tokens_per_s", "reward_time", "compile/")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_system_prompt_and_conversations_match_transformers(tmp_path):
    from transformers import AutoTokenizer

    convs = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(6)]
    convs[1] = [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "Do you want the sum?"},
        {"role": "user", "content": "Yes."},
    ]
    data = _jsonl(tmp_path / "c.jsonl", [{"prompt": c, "answer": "1"} for c in convs])
    system = "Answer with a number."
    cfg = load_config(  # the README's "your checkpoint + your JSONL" config
        ROOT / "configs" / "own_data.yaml",
        ONE_DEVICE
        + [
            f"model.path={QWEN2}",
            "model.dtype=float32",
            f"data.path={data}",
            f"data.system={system}",
            "data.max_prompt_len=160",
            "data.eval_size=2",
        ],
    )
    s = rl_stage.build(cfg)
    rows = [s.train_rows[i] for i in range(len(s.train_rows))]
    assert len(rows) == 4
    texts, ids, mask = s.text.encode(rows)
    hf = AutoTokenizer.from_pretrained(str(QWEN2))
    for row, text, ids_P, mask_P in zip(rows, texts, ids, mask):
        messages = [{"role": "system", "content": system}, *row["prompt"]]
        want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == want
        assert list(ids_P[mask_P == 1]) == hf(want, add_special_tokens=False)["input_ids"]
    assert texts[1].count("<|im_start|>") == 5  # system, user, assistant, user, generation


def test_overlong_prompts_are_filtered_at_load_and_resume_is_exact(tmp_path, caplog):
    rows = [
        {"prompt": f"{a}+{a + 1}=" if a % 3 else f"{a}{a}{a}+{a}{a}{a}=", "answer": "0"}
        for a in range(10, 40)
    ]  # every third prompt has 14 characters, over data.max_prompt_len=8
    data = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(
        SMOKE,
        ONE_DEVICE
        + [
            "data.source=jsonl",
            f"data.path={data}",
            "data.template=plain",
            "data.eval_size=6",
            "rewards.functions=[{fn: 'toy_rewards:ones_fraction'}]",
            "train.steps=3",
            "train.checkpoint_every=2",
            "train.eval_every=0",
        ],
    )
    with caplog.at_level(logging.INFO, logger="jaxrl_lrm.data.overlong"):
        s = rl_stage.build(cfg)
    assert isinstance(s.train_rows, KeptSource) and len(s.train_rows) == 16
    assert "8 of 24 train prompts are longer than data.max_prompt_len=8" in caplog.text
    assert "2 of 6 eval prompts" in caplog.text
    straight = train.run_rl(cfg, run_dir=tmp_path, quiet=True).history
    shutil.rmtree(tmp_path / "checkpoints" / "3")  # as if stopped after step 2's checkpoint
    resumed = train.run_rl(cfg, run_dir=tmp_path, quiet=True).history
    numeric = lambda r: {k: v for k, v in r.items() if not k.startswith(_TIMING)}  # noqa: E731
    assert [numeric(r) for r in resumed] == [numeric(straight[-1])]
    refuse = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, overlong="error"))
    with pytest.raises(ValueError, match="8 of 24 train prompts are longer.*item 2, 14 tokens"):
        rl_stage.build(refuse)


def test_eval_reward_default_rule_and_errors():
    cfg = load_config(SMOKE, ONE_DEVICE)
    fns = [("think_format", None, 1.0), ("math_accuracy", None, 1.0), ("overlong", None, 1.0)]
    assert rl_stage.eval_reward(cfg, fns)[0] == "math_accuracy"  # not the format reward first
    assert rl_stage.eval_reward(cfg, [("ones", None, 1.0), ("task", None, 1.0)])[0] == "task"
    two = load_config(SMOKE, ONE_DEVICE + ["rewards.functions=[think_format, answer_tag]"])
    why = rl_stage.eval_reward(two, [("think_format", None, 1.0), ("answer_tag", None, 1.0)])
    assert isinstance(why, str) and "set eval.reward to one of them" in why
    one = load_config(SMOKE, ONE_DEVICE + ["rewards.functions=[think_format]"])
    assert rl_stage.eval_reward(one, [("think_format", None, 1.0)])[0] == "think_format"
    named = load_config(SMOKE, ONE_DEVICE + ["eval.reward=answer_tag"])
    assert rl_stage.eval_reward(named, fns + [("answer_tag", None, 1.0)])[0] == "answer_tag"
    with pytest.raises(ConfigError, match=r"eval.reward='answer_tag': .*\['think_format', "):
        rl_stage.eval_reward(named, fns)


def test_eval_command_uses_the_config_it_is_given(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(SMOKE, ONE_DEVICE + ["train.steps=1", "train.eval_every=0"])
    train.run_rl(cfg, run_dir=run)

    def evaluate(*args):
        out = tmp_path / "eval.json"
        assert cli_main(["eval", *args, "--checkpoint", str(run), "--out", str(out)]) == 0
        return json.loads(out.read_text())

    assert "eval/pass@2" in evaluate()  # no CONFIG: the run's own (smoke: eval.k=2)
    given = tmp_path / "given.yaml"  # eval.k 1 and the default mesh (8 devices, not the run's 1)
    given.write_text(SMOKE.read_text().replace("k: 2", "k: 1"))
    both = "rewards.functions=[{fn: task}, {fn: 'toy_rewards:constant_one'}]"
    metrics = evaluate(str(given), both, "eval.reward=constant_one")
    assert "eval/pass@1" in metrics and metrics["eval/accuracy"] == 1.0
    capsys.readouterr()
    assert cli_main(["eval", str(tmp_path / "missing.yaml"), "--checkpoint", str(run)]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err
    assert cli_main(["eval", str(given), both, "eval.reward=nope", "--checkpoint", str(run)]) == 2
    assert "eval.reward='nope'" in capsys.readouterr().err


def test_truncate_keeps_the_last_tokens_in_rl_and_offline_encoding():
    tok = CharTokenizer("0123456789+=")
    text = host.Text(tok, "plain", 4, truncate=True)
    _, ids, mask = text.encode([{"prompt": "12+34="}, {"prompt": "5="}])
    assert [list(r[m == 1]) for r, m in zip(ids, mask)] == [tok.encode("+34="), tok.encode("5=")]
    with pytest.raises(ValueError, match="6 tokens exceeds data.max_prompt_len=4"):
        host.Text(tok, "plain", 4).encode([{"prompt": "12+34="}])
    pairs = [("12+34=", "46"), ("5=", "5")]
    cfg = load_config(SMOKE, ["data.max_prompt_len=4", "data.overlong=truncate"])
    enc = offline_data.encode_checked(cfg, pairs, tok, lambda q: q)
    assert list(enc["tokens_BL"][0, :4]) == tok.encode("+34=")
    filtered = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, overlong="filter"))
    enc = offline_data.encode_checked(filtered, pairs, tok, lambda q: q)
    assert enc["tokens_BL"].shape[0] == 1 and list(enc["tokens_BL"][0, 2:4]) == tok.encode("5=")
