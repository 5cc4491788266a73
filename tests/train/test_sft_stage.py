"""SFT stage: first-step loss against NumPy on a JSONL file, learning on the addition task,
exact resume, and `jaxrl-lrm train` / `export` through the command line."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import cli, models, sharding
from jaxrl_lrm.config import load_config
from jaxrl_lrm.data.iterator import PromptIterator
from jaxrl_lrm.models import transformer
from jaxrl_lrm.offline import sft as sft_stage
from jaxrl_lrm.train import setup, stages
from jaxrl_lrm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "sft.yaml"
REVERSE = ROOT / "tests" / "fixtures" / "pairs" / "reverse.jsonl"


def _config(run_dir, *overrides):
    return load_config(CONFIG, [f"run_dir={run_dir}", *overrides])


def test_first_step_loss_matches_numpy_on_jsonl(tmp_path):
    config = _config(
        tmp_path,
        "data.source=jsonl",
        f"data.path={REVERSE}",
        "data.template=plain",
        "data.max_prompt_len=10",
        "sampling.max_new_tokens=6",
        "train.steps=1",
        "train.prompts_per_step=8",
        "data.eval_size=0",
    )
    result = stages.train(config, quiet=True)
    # Rebuild the initial model and the first batch independently.
    rows = [json.loads(line) for line in REVERSE.read_text().splitlines()]
    _, tok, model = setup.build_model(config, sharding.make_mesh(1, 1, 1))
    idx = PromptIterator(range(len(rows)), 8, config.seed).next_indices()
    nll, count = 0.0, 0
    for i in idx:
        prompt = tok.encode(rows[i]["prompt"])
        target = tok.encode(rows[i]["completion"]) + [tok.eos_id]
        seq = jnp.asarray([prompt + target])
        logits = np.asarray(transformer.forward(model.params, model.config, seq)[0][0], np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        for k, t in enumerate(target):  # position len(prompt) - 1 + k predicts target[k]
            pos = len(prompt) - 1 + k
            nll += logz[pos] - logits[pos, t]
            count += 1
    np.testing.assert_allclose(result.history[0]["sft/loss"], nll / count, rtol=1e-5)


def test_sft_loss_falls_on_addition(tmp_path):
    result = stages.train(
        _config(tmp_path, "train.steps=40", "train.eval_every=0", "train.checkpoint_every=0"),
        quiet=True,
    )
    h = result.history
    assert h[0]["sft/loss"] > 2.4  # ~log(15) for a random model
    assert np.mean([m["sft/loss"] for m in h[-5:]]) < 2.0
    assert h[-1]["eval/loss"] < 2.0
    assert 0.0 <= h[-1]["eval/token_accuracy"] <= 1.0


def test_sft_resume_is_exact(tmp_path):
    over = ("train.steps=4", "train.checkpoint_every=2", "train.eval_every=2")
    stages.train(_config(tmp_path / "straight", *over))
    stages.train(_config(tmp_path / "split", *over), max_steps_this_run=2)
    stages.train(_config(tmp_path / "split", *over))
    strip = lambda rs: [
        {k: v for k, v in r.items() if not k.startswith(("time/", "compile/"))} for r in rs
    ]
    a = strip(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    b = strip(read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [1, 2, 3, 4] and "eval/loss" in a[1]
    assert a == b


def test_cli_train_and_export(tmp_path):
    run_dir = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            str(CONFIG),
            "train.steps=2",
            "train.checkpoint_every=0",
            "train.eval_every=0",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert rc == 0
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["sft/loss"]) for r in records)
    assert load_config(run_dir / "config.yaml").stage == "sft"
    out = tmp_path / "hf"
    assert cli.main(["export", str(run_dir), str(out)]) == 0  # the CLI's own export path
    loaded = models.load_pretrained(out)
    _, _, restored, step = stages.restore_params(run_dir)
    assert step == 2
    tokens = jnp.asarray([[3, 4, 5, 13, 6]])
    np.testing.assert_allclose(
        models.logits(loaded, tokens), models.logits(restored, tokens), rtol=1e-6, atol=1e-6
    )
    # A bad value in the config reaches the user as exit status 2, not a traceback.
    assert (
        cli.main(
            [
                "train",
                str(CONFIG),
                "train.prompts_per_step=100000",
                "--run-dir",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_task_pairs_use_sft_examples():
    config = _config("unused", "data.task_args.wrong_frac=1.0")
    task = setup.build_model(config, sharding.make_mesh(1, 1, 1))[0]
    pairs = sft_stage.sft_pairs(config, task, "train")
    assert len(pairs) == sft_stage.TASK_TRAIN_EXAMPLES
    # wrong_frac=1: every completion drops the carries, as AdditionTask.sft_examples does.
    for prompt, completion in pairs[:20]:
        a, b = (int(x) for x in prompt[:-1].split("+"))
        want = "0" + "".join(str((int(x) + int(y)) % 10) for x, y in zip(f"{a:02d}", f"{b:02d}"))
        assert completion == want
