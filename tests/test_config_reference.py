"""docs/config.md lists every config key, generated from the dataclasses' docstrings; this
fails when the page drifts from them or a key has no documentation (or a numeric key no
range), and checks the docstring reader and the range language the checks rely on."""

import dataclasses
import math
import typing

import pytest

from jaxrl_lrm.config import (
    AlgorithmSection,
    Config,
    ConfigError,
    LoraSection,
    ModelSection,
    RewardSpec,
    check_ranges,
    key_docs,
    reference,
)
from jaxrl_lrm.config.keys import _predicate


def test_the_page_is_generated_from_the_dataclasses():
    text = reference.PAGE.read_text()
    assert reference.MARKER in text, "docs/config.md lost its generated part"
    assert reference.page(text) == text, (
        "docs/config.md is stale: run `python -m jaxrl_lrm.config.reference`"
    )


def test_every_key_is_documented_and_every_number_has_a_range():
    assert reference.undocumented() == []


def test_every_key_appears_on_the_page():
    text = reference.PAGE.read_text()
    hints = typing.get_type_hints(Config)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(Config)}
    keys = [
        f"{name}.{f.name}" if dataclasses.is_dataclass(cls) else name
        for name, cls in sections.items()
        for f in (dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else [None])
    ]
    keys += [f"rewards.functions[].{f.name}" for f in dataclasses.fields(RewardSpec)]
    nested = {"model.lora": ModelSection.__dataclass_fields__["lora"]}  # sections in sections
    for name in nested:
        keys.remove(name)
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(LoraSection)]
    assert len(keys) > 80 and "train.min_lr_ratio" in keys
    assert [k for k in keys if f"| `{k}` |" not in text] == []


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Drifted:
    """A section whose docs drifted.

    Attributes:
        size (>= 1): documented, with a range.
        name (>= 0): a range on a string.
        gone: documented but not a field.
    """

    size: int = 1
    name: str = "x"
    count: int = 0


def test_drift_is_reported():
    problems = reference.undocumented(_Drifted)
    assert problems == [
        "_Drifted.name: a range must be given exactly for numeric keys",
        "_Drifted.count: no entry in the docstring's Attributes block",
        "_Drifted.gone: documented but not a field",
    ]


def test_docstring_entries_continue_over_lines():
    docs = key_docs(AlgorithmSection)
    assert docs["kl_target"].range == "> 0"
    assert docs["kl_target"].doc.endswith("`beta` is the starting coefficient.")
    assert docs["group_size"].range == ">= 1"


@pytest.mark.parametrize(
    "spec, inside, outside",
    [
        ("> 0", [1e-9, 3], [0, -1]),
        (">= 1", [1, 7], [0.5, -1]),
        ("0 <= x <= 1", [0, 0.5, 1], [-0.5, 1.01]),
        ("0 <= x < 1", [0, 0.999], [1, -0.1]),
        ("0 < x <= 1", [1, 0.1], [0, 2]),
        ("-1 or >= 1", [-1, 1, 8], [0, -2]),
        ("any", [-5, 0, 5], []),
    ],
)
def test_range_language(spec, inside, outside):
    ok = _predicate(spec)
    assert all(ok(v) for v in inside) and not any(ok(v) for v in outside)


def test_unreadable_range_is_refused():
    with pytest.raises(ValueError, match="unreadable range"):
        _predicate("positive")


def test_finite_check_comes_with_the_range():
    @dataclasses.dataclass(frozen=True)
    class S:
        """S.

        Attributes:
            w (any): a weight.
        """

        w: float = 1.0

    check_ranges(S(w=-3.0), "s")
    with pytest.raises(ConfigError, match=r"^s.w=inf: expected a finite number$"):
        check_ranges(S(w=math.inf), "s")
