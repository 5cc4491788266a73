"""The offline demo's task: zero-padded multi-digit addition with imperfect SFT data.

Prompts look like `047+285=` and the answer is the zero-padded sum with one more digit
(`0332`). The SFT "worked solutions" drop every carry in a fraction `wrong_frac` of examples
(`047+285=0222`), a systematic error a student model learns faithfully: greedy decoding then
plateaus near the share of problems that need no carry, however long SFT continues. A
verifiable reward (1 for a well-formed right answer) lets RL find and reinforce the carries.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ALPHABET = "0123456789+="


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdditionTask:
    digits: int = 3
    wrong_frac: float = 0.6  # share of SFT solutions with every carry dropped

    def __post_init__(self):
        if not 1 <= self.digits <= 12:
            raise ValueError(f"digits={self.digits!r}: expected 1..12")
        if not 0.0 <= self.wrong_frac <= 1.0:
            raise ValueError(f"wrong_frac={self.wrong_frac!r}: expected a value in [0, 1]")

    def _pairs(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 10**self.digits, size=(n, 2))

    def prompt(self, a: int, b: int) -> str:
        return f"{a:0{self.digits}d}+{b:0{self.digits}d}="

    def answer(self, a: int, b: int) -> str:
        return f"{a + b:0{self.digits + 1}d}"

    def no_carry_answer(self, a: int, b: int) -> str:
        """The sum with every carry dropped: digit-wise (a_i + b_i) mod 10, leading 0."""
        da, db = f"{a:0{self.digits}d}", f"{b:0{self.digits}d}"
        return "0" + "".join(str((int(x) + int(y)) % 10) for x, y in zip(da, db))

    def generate(self, n: int, seed: int) -> list[dict]:
        """Rows with `prompt` and `answer` (the true sum)."""
        return [
            {"prompt": self.prompt(int(a), int(b)), "answer": self.answer(int(a), int(b))}
            for a, b in self._pairs(n, seed)
        ]

    def sft_examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """`(prompt, completion)` pairs where a `wrong_frac` share drops the carries."""
        rng = np.random.default_rng(seed + 1)
        wrong = rng.random(n) < self.wrong_frac
        out = []
        for (a, b), w in zip(self._pairs(n, seed), wrong):
            a, b = int(a), int(b)
            out.append((self.prompt(a, b), self.no_carry_answer(a, b) if w else self.answer(a, b)))
        return out


def extract(completion: str, digits: int = 3) -> str | None:
    """The answer if the completion is well formed (exactly `digits + 1` digits), else None."""
    text = completion.strip()
    if len(text) == digits + 1 and text.isdigit():
        return text
    return None


def addition_reward(
    prompts: list[str], completions: list[str], answer: list[str], **_
) -> list[float]:
    """1.0 for a well-formed completion equal to the gold sum, else 0.0."""
    out = []
    for completion, gold in zip(completions, answer):
        got = extract(completion, len(gold) - 1)
        out.append(1.0 if got is not None and got == gold else 0.0)
    return out
