"""The offline demo: its plumbing on a tiny budget (fast), and its claim in full (slow)."""

import json
from pathlib import Path

import pytest

from jaxrl_lrm.cli import main as cli_main
from jaxrl_lrm.data import demo as demo_task
from jaxrl_lrm.data import demo_tools
from jaxrl_lrm.envs import template
from jaxrl_lrm.envs.calculator import calculator
from jaxrl_lrm.envs.tools import CALL_CLOSE, calculator_tool, parse_tool_call

ROOT = Path(__file__).resolve().parents[2]
# as `jaxrl-lrm demo` runs on a machine whose JAX sees one CPU (the tests simulate 8)
ONE_DEVICE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]


def test_addition_task_and_its_flawed_solutions():
    task = demo_task.AdditionTask(digits=3, wrong_frac=1.0)
    assert task.answer(47, 285) == "0332"
    assert task.no_carry_answer(47, 285) == "0222"  # 7+5=12 -> 2, 4+8=12 -> 2, 0+2 -> 2
    assert task.no_carry_answer(123, 456) == task.answer(123, 456)  # no carry needed
    pairs = task.sft_examples(50, 0)
    assert all(c == task.no_carry_answer(int(p[:3]), int(p[4:7])) for p, c in pairs)
    rows = task.generate(5, 3)
    assert rows == task.generate(5, 3) and rows[0]["prompt"].endswith("=")
    assert demo_task.addition_reward(["x"] * 3, ["0332", "332", "0222"], ["0332"] * 3) == [
        1.0,
        0.0,
        0.0,
    ]
    with pytest.raises(ValueError, match="wrong_frac=1.5"):
        demo_task.AdditionTask(wrong_frac=1.5)


def test_demo_pipeline_writes_its_summary(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    code = cli_main(
        [
            "demo",
            "--run-dir",
            str(run_dir),
            "sft.steps=20",
            "train.steps=4",
            "train.eval_every=2",
            "eval.num_prompts=16",
            "train.prompts_per_step=8",
            "sft.control_seconds=1.0",
            *ONE_DEVICE,
        ]
    )
    assert code == 0
    summary = json.loads((run_dir / "demo_summary.json").read_text())
    for key in ("sft_accuracy", "control_accuracy", "rl_accuracy", "seconds"):
        assert 0.0 <= summary[key] <= (1.0 if key != "seconds" else 1e4), key
    assert len(summary["rl_evals"]) == 2 and len(summary["control_evals"]) == 2
    assert summary["rl_accuracy"] == pytest.approx(sum(summary["rl_evals"]) / 2)
    for name in ("run.png", "demo.png", "config.yaml", "rl/metrics.jsonl"):
        assert (run_dir / name).exists(), name
    assert "| GRPO with the verifiable reward |" in capsys.readouterr().out
    # a second run never resumes or overwrites the first
    assert (
        cli_main(
            [
                "demo",
                "--run-dir",
                str(run_dir),
                "sft.steps=2",
                "train.steps=2",
                "train.eval_every=2",
                "eval.num_prompts=8",
                "train.prompts_per_step=8",
                "sft.control_seconds=0.5",
                *ONE_DEVICE,
            ]
        )
        == 0
    )
    assert (tmp_path / "demo-2" / "demo_summary.json").exists()
    assert json.loads((run_dir / "demo_summary.json").read_text()) == summary


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the claim is about accuracy; the clock assertion below checks time
def test_full_demo_meets_its_claim(tmp_path):
    """The README's claim: GRPO >= 40 points above the start of RL and >= 30 above the
    continued-SFT control, within 10 minutes on 2 CPU cores. On one device, as `jaxrl-lrm demo`
    runs on a machine whose JAX sees one CPU (the tests simulate 8)."""
    assert cli_main(["demo", "--run-dir", str(tmp_path / "demo"), *ONE_DEVICE]) == 0
    s = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert s["rl_accuracy"] - s["sft_accuracy"] >= 0.40, s
    assert s["rl_accuracy"] - s["control_accuracy"] >= 0.30, s
    assert s["seconds"] < 600, s


def test_tool_multiply_traces_call_the_calculator_as_the_rollout_would():
    """The tool demo's SFT traces: direct answers, and calls whose text parses as the
    environment parses it and whose observation is the calculator's output in the rollout's
    template; wrong calls swap the 2-digit operand; the final-answer reward."""

    task = demo_tools.ToolMultiplyTask(call_frac=0.5, wrong_call_frac=0.5)
    pairs, kinds = task.sft_examples(200, 0), set()
    for prompt, completion in pairs:
        a, b = (int(x) for x in prompt[:-1].split("*"))
        if not completion.startswith("<tool_call>"):
            assert completion == f"A:{a * b}"
            kinds.add("direct")
            continue
        call, rest = completion.split(CALL_CLOSE)
        parsed = parse_tool_call(call + CALL_CLOSE, {"calculator": calculator_tool()})
        got = parsed.arguments["expression"]
        kinds.add("right" if got == f"{a}*{b}" else "wrong")
        assert got in (f"{a}*{b}", f"{a}*{int(str(b)[::-1])}")
        value = calculator(got)
        assert rest == template.PLAIN.render(value) + f"A:{value}"
    assert kinds == {"direct", "right", "wrong"}
    row = task.generate(1, 0)[0]
    assert demo_tools.final_answer_reward(row, f"A:{row['answer']}") == 1.0
    assert demo_tools.final_answer_reward(row, f"A:{row['answer']}1") == 0.0
    assert demo_tools.extract("no answer") is None


@pytest.mark.slow
def test_tools_demo_pipeline_writes_its_summary(tmp_path):
    """`jaxrl-lrm demo --task tools` on a tiny budget: the summary has the accuracies and the
    tool-call rates of greedy episodes."""
    run_dir = tmp_path / "demo"
    tiny = "model.overrides={d_model: 32, n_layers: 1, n_heads: 2, n_kv_heads: 1, head_dim: 16, mlp_dim: 64}"
    args = ["sft.steps=4", "train.steps=2", "train.eval_every=2", "eval.num_prompts=8"]
    args += ["train.prompts_per_step=4", "sft.control_seconds=0.5", tiny, *ONE_DEVICE]
    assert cli_main(["demo", "--task", "tools", "--run-dir", str(run_dir), *args]) == 0
    summary = json.loads((run_dir / "demo_summary.json").read_text())
    for key in ("sft_accuracy", "control_accuracy", "rl_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    for key in ("sft_tool_call_rate", "rl_tool_call_rate"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["seconds"] > 0 and (run_dir / "demo.png").exists()
