"""Procedural verifiable tasks: generators with difficulty knobs and their reward functions.

Every task needs no download and is deterministic by seed. `generate_*(n, seed, config)` returns
rows with `prompt`, `answer` (gold string) and extra columns; each reward function has the TRL
signature and reads those columns. `TASKS` / `get_task` is the registry.
"""

import ast
import dataclasses
import fractions
import random
import re
from collections import Counter
from collections.abc import Callable

from jaxrl_lrm.rewards.unsupervised import extract_final_answer

_BOX = "Put the final answer in \\boxed{}."


def _as_fraction(text: str | None) -> fractions.Fraction | None:
    """`"x = -3"`, `"-3"`, `"7/2"`, `"3.50"`, `"1,200"` -> Fraction; anything else -> None."""
    if text is None:
        return None
    text = text.replace("$", "").replace(",", "").replace(" ", "")
    text = re.sub(r"^[a-zA-Z]=", "", text)
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if m:
        text = f"{m[1]}/{m[2]}"
    try:
        return fractions.Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _numeric_reward(completions: list[str], answer: list[str]) -> list[float]:
    if len(answer) != len(completions):
        raise ValueError(f"answer has {len(answer)} entries for {len(completions)} completions")
    out = []
    for completion, gold in zip(completions, answer):
        got = _as_fraction(extract_final_answer(completion))
        out.append(float(got is not None and got == _as_fraction(str(gold))))
    return out


# --- arithmetic --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArithmeticConfig:
    """Multi-step integer arithmetic. Difficulty: more terms, larger values, parentheses."""

    num_terms: int = 3
    max_value: int = 20
    ops: tuple[str, ...] = ("+", "-", "*")
    parentheses: bool = False

    def __post_init__(self):
        if self.num_terms < 2 or self.max_value < 1:
            raise ValueError(f"need num_terms >= 2, max_value >= 1; got {self}")
        if not self.ops or set(self.ops) - {"+", "-", "*"}:
            raise ValueError(f"ops must be a non-empty subset of ('+', '-', '*'), got {self.ops}")


def generate_arithmetic(n: int, seed: int, config: ArithmeticConfig | None = None) -> list[dict]:
    """Rows `{prompt, answer, expression}`; `answer` is the exact integer value."""
    config = config or ArithmeticConfig()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        expr = str(rng.randint(1, config.max_value))
        for _ in range(config.num_terms - 1):
            op, term = rng.choice(config.ops), rng.randint(1, config.max_value)
            expr = f"{expr} {op} {term}"
            if config.parentheses and rng.random() < 0.5:
                expr = f"({expr})"
        value = _safe_eval(expr)
        prompt = f"Compute {expr}. {_BOX}"
        rows.append({"prompt": prompt, "answer": str(value), "expression": expr})
    return rows


def arithmetic_reward(prompts: list[str], completions: list[str], answer, **_) -> list[float]:
    """1.0 iff the extracted answer (`\\boxed{}` / `<answer>`) equals `answer` numerically."""
    return _numeric_reward(completions, answer)


# --- countdown ---------------------------------------------------------------------------------

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _safe_eval(expr: str, used: list[int] | None = None) -> fractions.Fraction:
    """Exact value of `expr` built only from integer literals, + - * /, and parentheses.

    Walks the `ast` with a whitelist (never `eval`); literals are appended to `used`.

    Raises:
      ValueError: on any other syntax or node, or division by zero.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"expression does not parse: {expr!r}") from e

    def walk(node) -> fractions.Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError(f"division by zero in {expr!r}")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if used is not None:
                used.append(node.value)
            return fractions.Fraction(node.value)
        raise ValueError(f"disallowed syntax {type(node).__name__} in {expr!r}")

    return walk(tree.body)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountdownConfig:
    """Reach `target` from `num_numbers` numbers in [1, max_number], each used at most once."""

    num_numbers: int = 4
    max_number: int = 25
    max_target: int = 1000

    def __post_init__(self):
        if self.num_numbers < 2 or self.max_number < 2 or self.max_target < 1:
            raise ValueError(f"need num_numbers >= 2, max_number >= 2, max_target >= 1; got {self}")


def generate_countdown(n: int, seed: int, config: CountdownConfig | None = None) -> list[dict]:
    """Rows `{prompt, answer, numbers, target}`; `answer` is one solving expression.

    The target is built by combining all numbers in a random order with random operations,
    keeping every intermediate value a positive integer, so a solution always exists.
    """
    config = config or CountdownConfig()
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        numbers = [rng.randint(1, config.max_number) for _ in range(config.num_numbers)]
        order = rng.sample(numbers, len(numbers))
        expr, value = str(order[0]), order[0]
        for x in order[1:]:
            ops = ["+", "*"] + (["-"] if value > x else []) + (["/"] if value % x == 0 else [])
            op = rng.choice(ops)
            value = {"+": value + x, "-": value - x, "*": value * x, "/": value // x}[op]
            expr = f"({expr} {op} {x})"
        if not 1 <= value <= config.max_target:
            continue
        expr = expr[1:-1] if expr.startswith("(") else expr
        prompt = (
            f"Using the numbers {numbers}, each at most once, and + - * / with parentheses, "
            f"write an expression equal to {value}. Give the expression in <answer></answer>."
        )
        rows.append({"prompt": prompt, "answer": expr, "numbers": numbers, "target": value})
    return rows


def check_countdown(expression: str | None, numbers: list[int], target: int) -> bool:
    """True iff `expression` uses only `numbers` (each at most once) and equals `target`."""
    if expression is None:
        return False
    expression = expression.split("=")[0]
    used: list[int] = []
    try:
        value = _safe_eval(expression, used)
    except (ValueError, RecursionError):
        return False
    return not Counter(used) - Counter(numbers) and value == target


def countdown_reward(
    prompts: list[str], completions: list[str], numbers, target, **_
) -> list[float]:
    """1.0 iff the expression in `<answer>` / `\\boxed{}` (text before any `=`) reaches `target`
    using each of `numbers` at most once, else 0.0."""
    if not len(numbers) == len(target) == len(completions):
        raise ValueError(f"numbers/target need {len(completions)} entries each")
    return [
        float(check_countdown(extract_final_answer(c), list(nums), int(t)))
        for c, nums, t in zip(completions, numbers, target)
    ]


# --- linear equations --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearConfig:
    """`a*x + b = c*x + d` with an integer solution in [-max_solution, max_solution]."""

    max_coef: int = 10
    max_solution: int = 10

    def __post_init__(self):
        if self.max_coef < 2 or self.max_solution < 1:
            raise ValueError(f"need max_coef >= 2, max_solution >= 1; got {self}")


def generate_linear(n: int, seed: int, config: LinearConfig | None = None) -> list[dict]:
    """Rows `{prompt, answer, equation}`; `answer` is the integer solution for x."""
    config = config or LinearConfig()
    rng = random.Random(seed)
    k = config.max_coef
    rows = []
    for _ in range(n):
        x = rng.randint(-config.max_solution, config.max_solution)
        a, c = rng.sample([v for v in range(-k, k + 1) if v != 0], 2)  # a != c: one solution
        b = rng.randint(-k, k)
        d = (a - c) * x + b
        equation = f"{a}*x + {b} = {c}*x + {d}".replace("+ -", "- ")
        rows.append(
            {"prompt": f"Solve {equation} for x. {_BOX}", "answer": str(x), "equation": equation}
        )
    return rows


def linear_reward(prompts: list[str], completions: list[str], answer, **_) -> list[float]:
    """1.0 iff the extracted value of x equals `answer` (`x = 3`, `3`, `6/2` all accepted)."""
    return _numeric_reward(completions, answer)


# --- registry ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """A procedural task: its config class, generator `(n, seed, config)` and reward function."""

    name: str
    config: type
    generate: Callable[..., list[dict]]
    reward: Callable[..., list[float]]


TASKS = {
    "arithmetic": Task(
        name="arithmetic",
        config=ArithmeticConfig,
        generate=generate_arithmetic,
        reward=arithmetic_reward,
    ),
    "countdown": Task(
        name="countdown",
        config=CountdownConfig,
        generate=generate_countdown,
        reward=countdown_reward,
    ),
    "linear": Task(
        name="linear", config=LinearConfig, generate=generate_linear, reward=linear_reward
    ),
}


def get_task(name: str) -> Task:
    """The registered task `name`.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


# --- reasoning-gym adapter (optional extra) ----------------------------------------------------


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(
            "the reasoning-gym adapter needs the optional extra: pip install 'jaxrl_lrm[reasoning-gym]'"
        ) from e
    return reasoning_gym


def generate_reasoning_gym(name: str, n: int, seed: int, **task_kwargs) -> list[dict]:
    """Rows `{prompt, answer, rg_task, rg_entry}` from reasoning-gym's dataset `name`.

    `rg_entry` is the dataset entry itself (a dict), which `reasoning_gym_reward` needs to score.
    """
    rg = _reasoning_gym()
    dataset = rg.create_dataset(name, size=n, seed=seed, **task_kwargs)
    return [
        {
            "prompt": entry["question"],
            "answer": str(entry["answer"]),
            "rg_task": name,
            "rg_entry": entry,
        }
        for entry in dataset
    ]


def reasoning_gym_reward(
    prompts: list[str], completions: list[str], rg_task, rg_entry, **_
) -> list[float]:
    """reasoning-gym's own `score_answer` on the `<answer>` / `\\boxed{}` content (None -> 0)."""
    rg = _reasoning_gym()
    datasets = {}
    out = []
    for completion, task, entry in zip(completions, rg_task, rg_entry):
        if task not in datasets:
            datasets[task] = rg.create_dataset(task, size=1, seed=0)
        answer = extract_final_answer(completion)
        score = 0.0 if answer is None else datasets[task].score_answer(answer=answer, entry=entry)
        out.append(float(score))
    return out
