"""The tool-use demo's task: the product of a 3-digit and a 2-digit number, with a calculator.

Prompts look like `123*45=`; the answer is `A:5535`. A small character-level model cannot
multiply in its head, but it can copy the operands into a calculator call and copy the result
back. The SFT traces mostly answer directly (right, but a model this size cannot learn that),
sometimes call the calculator with the right expression, and sometimes with the wrong one
(the 2-digit operand's digits swapped), so greedy decoding after SFT answers directly and is
almost never right, however long SFT continues; GRPO with the final-answer reward finds that
calls with the right arguments pay and makes them the policy.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from jaxrl_lrm.envs.template import PLAIN
from jaxrl_lrm.envs.tools import CALL_CLOSE, CALL_OPEN

ANSWER = "A:"


def call_text(expression: str) -> str:
    """A calculator call in the tool-call format."""
    body = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolMultiplyTask:
    call_frac: float = 0.3  # share of SFT traces that call the calculator
    wrong_call_frac: float = 0.33  # share of those calls with the operand's digits swapped

    def __post_init__(self):
        for name in ("call_frac", "wrong_call_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r}: expected a value in [0, 1]")

    def _pairs(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.stack([rng.integers(100, 1000, n), rng.integers(10, 100, n)], axis=1)

    def generate(self, n: int, seed: int) -> list[dict]:
        """Rows with `prompt` (`a*b=`) and `answer` (the product's digits)."""
        return [{"prompt": f"{a}*{b}=", "answer": str(a * b)} for a, b in self._pairs(n, seed)]

    def sft_examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """`(prompt, completion)` traces: direct answers, right calls and wrong calls (the
        observation is written as the rollout would append it, `envs.template.PLAIN`)."""
        rng = np.random.default_rng(seed + 1)
        calls, wrong = rng.random(n) < self.call_frac, rng.random(n) < self.wrong_call_frac
        out = []
        for (a, b), c, w in zip(self._pairs(n, seed), calls, wrong):
            a, b = int(a), int(b)
            if not c:
                out.append((f"{a}*{b}=", f"{ANSWER}{a * b}"))
                continue
            b2 = int(str(b)[::-1]) if w else b
            obs = PLAIN.render(str(a * b2))
            out.append((f"{a}*{b}=", f"{call_text(f'{a}*{b2}')}{obs}{ANSWER}{a * b2}"))
        return out


def extract(text: str) -> str | None:
    """The digits after the last `A:`, or None."""
    i = text.rfind(ANSWER)
    if i < 0:
        return None
    got = text[i + len(ANSWER) :].strip()
    return got if got.isdigit() else None


def final_answer_reward(row: dict, final_turn: str) -> float:
    """`env.reward`: 1.0 when the last turn's answer is the product, else 0.0."""
    return 1.0 if extract(final_turn) == str(row["answer"]) else 0.0


def transcript_reward(prompts, completions, answer, **_) -> list[float]:
    """The same check as a reward function over whole transcripts (SFT-side evaluation)."""
    return [1.0 if extract(c) == str(g) else 0.0 for c, g in zip(completions, answer)]
