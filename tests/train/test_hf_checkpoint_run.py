"""The real-checkpoint path end to end: a Hugging Face checkpoint directory (the tiny Qwen2
fixture, with its tokenizer and chat template), a JSONL dataset, the sympy math reward, then
export back to a Hugging Face directory."""

import json
import math
from pathlib import Path

import numpy as np

from jaxrl_lrm import models
from jaxrl_lrm.cli import main as cli_main
from jaxrl_lrm.config import load_config
from jaxrl_lrm.train import loop, rl_stage
from jaxrl_lrm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_grpo_from_hf_checkpoint_on_jsonl_then_export(tmp_path):
    data = tmp_path / "math.jsonl"
    with open(data, "w") as f:
        for i in range(40):
            f.write(
                json.dumps({"question": f"What is {i} + {i + 1}?", "gold": str(2 * i + 1)}) + "\n"
            )
    run_dir = tmp_path / "run"
    overrides = [
        f"model.path={ROOT / 'tests' / 'fixtures' / 'qwen2'}",
        "model.preset=null",
        "model.overrides={}",
        "data.source=jsonl",
        f"data.path={data}",
        "data.prompt_field=question",
        "data.answer_field=gold",
        "data.template=chat",
        "data.max_prompt_len=32",
        "data.eval_size=8",
        "rewards.functions=[{fn: math_accuracy}, {fn: think_format}]",
        "mesh.data=1",
        "mesh.fsdp=1",
        "mesh.tensor=1",
        "train.steps=2",
        "train.eval_every=2",
        "eval.num_prompts=4",
        "eval.k=0",
        "sampling.max_new_tokens=6",
        f"run_dir={run_dir}",
    ]
    config = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    s = rl_stage.build(config)
    assert s.text.tokenizer.chat_template is not None
    assert s.text.render("hi").startswith("<|im_start|>user")
    result = loop.run(config, rl_stage.stage(s), run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
        assert 0.0 <= r["reward/math_accuracy"] <= 1.0
    assert "eval/accuracy" in records[-1]
    # export the trained policy and load it back: same logits as the trained parameters
    out = tmp_path / "export"
    assert cli_main(["export", str(run_dir), str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    reloaded = models.load_pretrained(out)
    tokens = np.array([[5, 17, 42, 9, 100, 7]])
    start = models.load_pretrained(ROOT / "tests" / "fixtures" / "qwen2")
    want = models.logits(start.replace(params=result.params), tokens)
    got = models.logits(reloaded, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # the trained parameters differ from the checkpoint we started from
    assert not np.allclose(np.asarray(models.logits(start, tokens)), np.asarray(got))
