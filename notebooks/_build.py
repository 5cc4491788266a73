"""Writes the notebooks of this folder from the cell sources below (outputs stripped).

    python notebooks/_build.py          # rewrite the .ipynb files
    python notebooks/_build.py --check  # exit 1 if a notebook differs from its source here

Edit the cells here, not in Jupyter, so the notebooks stay reviewable and deterministic (cell ids
are fixed). `tests/test_notebooks.py` executes every notebook and checks it matches this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = """\
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # sized for one CPU core; set before JAX starts
ROOT = Path.cwd() if (Path.cwd() / "configs").is_dir() else Path.cwd().parent
assert (ROOT / "configs" / "smoke.yaml").is_file(), f"run from the repo or notebooks/, not {ROOT}"
"""

LOSS = [
    "# Prototype a policy loss\n\n"
    "A new loss is a few lines of `jnp` on top of the pieces in `jaxrl_lrm.losses`. Here: a "
    "clipped surrogate with an **asymmetric clip** (DAPO's clip-higher) plus a **token-level "
    "k3 KL** to a reference policy (GRPO's KL term), written from scratch, then checked against "
    "the library's `losses.policy_loss`, a NumPy reference and an analytic gradient. The asserts "
    "make this notebook fail if the library drifts.",
    SETUP,
    """\
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import losses

jax.config.update("jax_default_matmul_precision", "highest")
""",
    "## Random inputs\n\n`B = 6` sequences of up to `T = 5` tokens; row lengths differ so the "
    "aggregation modes disagree.",
    """\
B, T = 6, 5
rng = np.random.default_rng(0)
old_logp = np.log(rng.uniform(0.05, 0.9, (B, T))).astype(np.float32)
logp = (old_logp + rng.normal(0.0, 0.3, (B, T))).astype(np.float32)  # ratios spread around 1
ref_logp = (old_logp + rng.normal(0.0, 0.2, (B, T))).astype(np.float32)
advantages = rng.normal(0.0, 1.0, B).astype(np.float32)
lengths = np.array([5, 1, 3, 5, 2, 4])
mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
print("ratios:\\n", np.round(np.exp(logp - old_logp), 2))
""",
    "## The prototype\n\n"
    "`l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)) + beta * k3(logp, ref_logp)`, then "
    "one of the `aggregate` modes.",
    """\
def clip_higher_kl_loss(logp, old_logp, ref_logp, advantages, mask, *, eps_low=0.2,
                        eps_high=0.28, beta=0.04, agg="token-mean"):
    r = jnp.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = jnp.maximum(-a * r, -a * jnp.clip(r, 1 - eps_low, 1 + eps_high))
    kl = losses.kl_penalty(logp, ref_logp, "k3")
    return losses.aggregate(surrogate + beta * kl, mask, agg, max_len=T)
""",
    "## Same value as the library, for every aggregation mode\n\n"
    "With `beta = 0` it must equal `losses.policy_loss(clip_low=eps_low, clip_high=eps_high)`; "
    "with `beta > 0` the KL term adds `beta * aggregate(k3)` (aggregation is linear).",
    """\
MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
rows = []
for agg in MODES:
    lib, metrics = losses.policy_loss(logp, old_logp, advantages, mask, clip_low=0.2,
                                      clip_high=0.28, agg=agg, max_len=T)
    ours0 = clip_higher_kl_loss(logp, old_logp, ref_logp, advantages, mask, beta=0.0, agg=agg)
    ours = clip_higher_kl_loss(logp, old_logp, ref_logp, advantages, mask, agg=agg)
    kl = losses.aggregate(losses.kl_penalty(logp, ref_logp, "k3"), mask, agg, max_len=T)
    np.testing.assert_allclose(ours0, lib, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours, lib + 0.04 * kl, rtol=1e-6, atol=1e-7)
    rows.append((agg, float(lib), float(ours), float(metrics["clipfrac"])))
print(f"{'agg':<26}{'policy_loss':>12}{'prototype':>12}{'clipfrac':>10}")
for agg, lib, ours, cf in rows:
    print(f"{agg:<26}{lib:>12.5f}{ours:>12.5f}{cf:>10.3f}")
assert 0.0 < rows[0][3] < 1.0, "the inputs should clip some tokens and not others"
""",
    "## A NumPy reference for `token-mean`\n\nWritten out with the equations, not the library.",
    """\
r = np.exp(logp.astype(np.float64) - old_logp)
a = advantages[:, None].astype(np.float64)
surr = np.maximum(-a * r, -a * np.clip(r, 0.8, 1.28))
d = ref_logp.astype(np.float64) - logp
k3 = np.exp(d) - d - 1
want = np.sum((surr + 0.04 * k3) * mask) / np.sum(mask)
got = clip_higher_kl_loss(logp, old_logp, ref_logp, advantages, mask)
print(float(got), want)
np.testing.assert_allclose(got, want, rtol=1e-5)
np.testing.assert_allclose(jax.jit(clip_higher_kl_loss)(logp, old_logp, ref_logp, advantages,
                                                        mask), got, rtol=1e-6)
""",
    "## The gradient with `jax.grad`\n\n"
    "Per token (token-mean, `N` = number of tokens): the surrogate contributes `-A r / N` where "
    "the unclipped term is active and 0 where the clip is; the KL contributes "
    "`beta (1 - exp(ref_logp - logp)) / N`. Padding gets exactly 0.",
    """\
grad = jax.grad(clip_higher_kl_loss)(jnp.asarray(logp), old_logp, ref_logp, advantages, mask)
inside = (r >= 0.8) & (r <= 1.28)  # both terms equal, both carry the gradient -A r
unclipped_wins = -a * r > -a * np.clip(r, 0.8, 1.28)  # outside the range, only this one does
g_surr = np.where(inside | unclipped_wins, -a * r, 0.0)
want_grad = (g_surr + 0.04 * (1 - np.exp(d))) * mask / np.sum(mask)
np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
assert np.all(np.asarray(grad)[mask == 0] == 0.0)
print(np.round(np.asarray(grad), 4))
""",
    "## What the aggregation mode does to the gradient\n\n"
    "`token-mean` gives every token the same weight `1/N`; `seq-mean-token-mean` gives each "
    "*sequence* the same weight, so tokens of short rows get larger gradients (the length bias "
    "Dr. GRPO removes); `seq-mean-token-sum-norm` divides by the constant `B * T`.",
    """\
ones = np.ones(B, np.float32)
r1 = np.zeros((B, T), np.float32)  # ratio 1, no clipping: d loss / d logp = -A * weight
for agg in MODES:
    def loss_fn(lp, agg=agg):
        return losses.policy_loss(lp, r1, ones, mask, agg=agg, max_len=T)[0]

    g = np.asarray(jax.grad(loss_fn)(r1))
    per_token = -g[:, 0]  # first token of every row (all rows have >= 1 token)
    print(f"{agg:<26}", np.round(per_token, 4), "  lengths", lengths)
    if agg == "token-mean":
        np.testing.assert_allclose(per_token, 1 / mask.sum(), rtol=1e-6)
    elif agg == "seq-mean-token-sum":
        np.testing.assert_allclose(per_token, 1 / B, rtol=1e-6)
    elif agg == "seq-mean-token-mean":
        np.testing.assert_allclose(per_token, 1 / (B * lengths), rtol=1e-6)
    else:
        np.testing.assert_allclose(per_token, 1 / (B * T), rtol=1e-6)
""",
]

REWARDS = [
    "# Inspect rewards\n\n"
    "The host-side reward functions on a handful of example completions: the math verifier, "
    "the format rewards, a weighted combination, the code sandbox, and the process-pool "
    "executor that the trainer uses. Each table is plain text; the asserts pin the expected "
    "values.",
    SETUP,
    """\
import math

from jaxrl_lrm.rewards import code, format, shaping
from jaxrl_lrm.rewards import math as math_reward
from jaxrl_lrm.rewards.executor import RewardExecutor


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
""",
    "## Math: `math.verify` and `math.accuracy_reward`\n\n"
    "Symbolic comparisons run in SymPy worker processes; the first one in a fresh process pays "
    "their start-up, so this notebook starts them with `warmup()` and gives a generous "
    "`timeout_s` (the default is 2 s).",
    """\
math_reward.warmup()
MATH = [  # (completion, gold, expected)
    ("Half of one is $\\\\boxed{\\\\frac{1}{2}}$.", "0.5", True),
    ("<think>6*7</think><answer>42</answer>", "42", True),
    ("So $\\\\boxed{2\\\\sqrt{2}}$.", "\\\\sqrt{8}", True),
    ("Expanding: \\\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\\\boxed{3}", "4", False),
    ("I am not sure.", "1", False),
]
rows = []
for completion, gold, expected in MATH:
    got = math_reward.verify(completion, gold, timeout_s=20.0)
    rows.append([repr(completion)[:42], gold, math_reward.extract_answer(completion), got])
    assert got is expected, (completion, gold, got)
table(["completion", "gold", "extracted", "verify"], rows)
acc = math_reward.accuracy_reward(None, [c for c, _, _ in MATH], answer=[g for _, g, _ in MATH])
assert acc == [1.0 if e else 0.0 for _, _, e in MATH], acc
""",
    "## Format: `format.think_format_reward` and `format.answer_tag_reward`",
    """\
FORMAT = [  # (completion, think_format, answer_tag)
    ("<think>2+3</think><answer>5</answer>", 1.0, 1.0),
    ("<think>2+3</think> so the answer is \\\\boxed{5}.", 1.0, 0.0),
    ("<answer>5</answer>", 0.0, 1.0),
    ("<think>a<think>b</think><answer>5</answer>", 0.0, 1.0),
    ("5", 0.0, 0.0),
]
completions = [c for c, _, _ in FORMAT]
think = format.think_format_reward(None, completions)
tag = format.answer_tag_reward(None, completions)
table(["completion", "think_format", "answer_tag"],
      [[repr(c), t, a] for c, t, a in zip(completions, think, tag)])
assert think == [t for _, t, _ in FORMAT] and tag == [a for _, _, a in FORMAT]
""",
    "## Shaping: a weighted combination\n\n"
    "`shaping.combine([(fn, weight), ...])` sums weighted rewards; `score` also returns each "
    "function's own values. Here accuracy + 0.2 x format - 0.1 x a length penalty (token "
    "lengths come in the `completion_lengths` column, as the trainer passes them).",
    """\
combined = shaping.combine([(math_reward.accuracy_reward, 1.0),
                            (format.think_format_reward, 0.2),
                            (shaping.length_penalty(max_len=100), 0.1)])
completions = ["<think>6*7</think><answer>42</answer>", "<think>hmm</think><answer>41</answer>",
               "42", "\\\\boxed{42}"]
columns = {"answer": ["42"] * 4, "completion_lengths": [10, 50, 200, 5]}
total, per_fn = combined.score(None, completions, **columns)
names = list(per_fn)
table(["completion", *names, "total"],
      [[repr(c), *(per_fn[n][i] for n in names), round(total[i], 4)]
       for i, c in enumerate(completions)])
want = [a + 0.2 * f - 0.1 * min(n, 100) / 100 for a, f, n in
        zip([1, 0, 1, 1], [1, 1, 0, 0], columns["completion_lengths"])]
assert all(math.isclose(t, w, abs_tol=1e-9) for t, w in zip(total, want)), (total, want)
assert combined(None, completions, **columns) == total
""",
    "## Code: the sandbox and `code.unit_test_reward`\n\n"
    "Each test runs in its own sandboxed subprocess with a time and memory limit; the reward is "
    "the fraction of tests passed by the last fenced code block.",
    """\
result = code.execute("print(input()[::-1])", stdin="stressed", timeout_s=5.0)
print(result)
assert result.status == "ok" and result.stdout == "desserts\\n"
assert code.execute("while True: pass", timeout_s=0.5).status == "timeout"

FENCE = "```"
CODE = [  # (completion, expected fraction of the 2 tests)
    (f"{FENCE}python\\ndef add(a, b):\\n    return a + b\\n{FENCE}", 1.0),
    (f"{FENCE}python\\ndef add(a, b):\\n    return a + b if a < 2 else 0\\n{FENCE}", 0.5),
    ("def add(a, b): return a + b   (no code block)", 0.0),
    (f"{FENCE}python\\ndef add(a, b):\\n    while True:\\n        pass\\n{FENCE}", 0.0),
]
tests = ["assert add(1, 2) == 3\\nassert add(2, 2) == 4"] * len(CODE)
got = code.unit_test_reward(None, [c for c, _ in CODE], tests, timeout_s=1.0)
table(["completion", "reward"], [[repr(c)[:50], g] for (c, _), g in zip(CODE, got)])
assert got == [w for _, w in CODE], got
""",
    "## The executor: a process pool with timeouts\n\n"
    "`RewardExecutor` scores a batch with `(name, fn, weight)` triples in worker processes, as "
    "the trainer does; its totals must equal calling the functions directly.",
    """\
batch = ["<think>6*7</think><answer>42</answer>", "<answer>41</answer>", "\\\\boxed{42}",
         "<think>x</think>\\\\boxed{42}"]
cols = {"answer": ["42"] * 4}
fns = [("accuracy", math_reward.accuracy_reward, 1.0), ("format", format.think_format_reward, 0.5)]
with RewardExecutor(fns, num_workers=2, timeout_s=30.0, chunk_size=2) as executor:
    total, per_name, stats = executor.score([""] * 4, batch, cols)
direct = [a + 0.5 * f for a, f in zip(math_reward.accuracy_reward(None, batch, **cols),
                                       format.think_format_reward(None, batch))]
table(["completion", "accuracy", "format", "total"],
      [[repr(c), per_name["accuracy"][i], per_name["format"][i], total[i]]
       for i, c in enumerate(batch)])
print({k: v for k, v in stats.items() if k != "time_s"})
assert list(total) == direct == [1.5, 0.0, 1.0, 1.5], (total, direct)
assert stats["errors/accuracy"] == stats["timeouts/format"] == 0
""",
]

GRPO = [
    "# A tiny GRPO loop\n\n"
    "`configs/smoke.yaml` shrunk further (3 steps, a 1-layer model, 2-digit addition), run "
    "through the library's trainer exactly as `jaxrl-lrm train` would, then its "
    "`metrics.jsonl` is read back and the reward plotted. A random model earns ~0 reward: this "
    "checks the plumbing (sampling, rewards, advantages, update, logging, checkpoints), not "
    "learning; `jaxrl-lrm demo` is the run that learns.",
    SETUP,
    """\
import json
import math
import tempfile

import matplotlib.pyplot as plt
import yaml

from jaxrl_lrm import config as config_lib
from jaxrl_lrm.rl import trainer

plt.switch_backend("Agg")  # files only, no display
""",
    "## The config: smoke.yaml, smaller",
    """\
raw = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
raw["train"].update(steps=3, prompts_per_step=2, checkpoint_every=3, eval_every=3)
raw["eval"].update(num_prompts=4)
raw["algorithm"]["group_size"] = 4
config = config_lib.from_dict(raw)
print(config.algorithm)
print(config.train)
""",
    "## Train\n\n`trainer.train` returns `RunResult(metrics, params, session, history)`.",
    """\
run_dir = Path(tempfile.mkdtemp(prefix="tiny_grpo_"))
result = trainer.train(config, run_dir=run_dir)
print(sorted(p.name for p in run_dir.iterdir()))
""",
    "## Read `metrics.jsonl` back",
    """\
records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
assert [r["step"] for r in records] == [1, 2, 3], records
KEYS = ["reward/mean", "kl/mean", "entropy/mean", "response_length/mean", "time/step_s",
        "loss/total", "grad_norm"]
for r in records:
    missing = [k for k in KEYS if k not in r]
    assert not missing, f"step {r['step']} lacks {missing}"
    assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in KEYS), r
    assert 0.0 <= r["reward/mean"] <= 1.0
    assert 0.0 < r["response_length/mean"] <= config.sampling.max_new_tokens
assert "eval/accuracy" in records[-1] and 0.0 <= records[-1]["eval/accuracy"] <= 1.0
# The file and the returned history hold the same numbers.
for r, h in zip(records, result.history):
    assert r["step"] == h["step"] and math.isclose(r["reward/mean"], h["reward/mean"])
# The resolved config was saved next to the metrics and reads back equal.
assert config_lib.load_config(run_dir / "config.yaml") == config
print(f"{'step':>4}  {'reward':>7}  {'kl':>9}  {'entropy':>7}  {'len':>5}")
for r in records:
    print(f"{r['step']:>4}  {r['reward/mean']:>7.3f}  {r['kl/mean']:>9.2e}  "
          f"{r['entropy/mean']:>7.3f}  {r['response_length/mean']:>5.2f}")
""",
    "## Plot the reward",
    """\
steps = [r["step"] for r in records]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(steps, [r["reward/mean"] for r in records], "o-", label="reward/mean")
ax.plot(steps, [r["kl/mean"] for r in records], "s--", label="kl/mean")
ax.set_xlabel("step")
ax.legend()
fig.tight_layout()
out = run_dir / "reward_curve.png"
fig.savefig(out)
plt.close(fig)
assert out.stat().st_size > 1000
print(out)
""",
    "## Clean up\n\nDelete the temporary run directory (skip this cell to keep it and point "
    "TensorBoard at `run_dir / 'tensorboard'`).",
    """\
import shutil

shutil.rmtree(run_dir)
""",
]

NOTEBOOKS = {
    "01_prototype_a_loss.ipynb": LOSS,
    "02_inspect_rewards.ipynb": REWARDS,
    "03_tiny_grpo_loop.ipynb": GRPO,
}


def build(cells: list[str]) -> nbformat.NotebookNode:
    """A notebook whose first cell and every other one after it alternate markdown / code.

    Markdown cells are the ones that start with `#` followed by a space or a second `#`.
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, src in enumerate(cells):
        is_md = src.startswith("# ") or src.startswith("## ")
        cell = nbformat.v4.new_markdown_cell(src) if is_md else nbformat.v4.new_code_cell(
            src.rstrip("\n"))
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python notebooks/_build.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
