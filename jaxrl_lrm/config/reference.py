"""`docs/config.md`'s key reference, generated from the config dataclasses' docstrings.

    python -m jaxrl_lrm.config.reference           # rewrite docs/config.md below its marker
    python -m jaxrl_lrm.config.reference --check   # exit 1 when the page is stale

The page's hand-written part ends at `MARKER`; everything after it is `reference()`.
tests/test_config_reference.py fails when the page drifts or a key has no documentation.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import yaml

from jaxrl_lrm.config.keys import key_docs, numeric_kind
from jaxrl_lrm.config.sections import RewardSpec
from jaxrl_lrm.config.training import Config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"
MARKER = "<!-- generated below by `python -m jaxrl_lrm.config.reference`; do not edit -->"


def undocumented(cls=Config) -> list[str]:
    """Problems with the documentation of `cls` and every section under it: fields with no
    entry, entries for no field, numeric fields with no range and ranges on other fields."""
    problems, hints = [], typing.get_type_hints(cls)
    docs, names = key_docs(cls), [f.name for f in dataclasses.fields(cls)]
    for name in names:
        where = f"{cls.__name__}.{name}"
        if name not in docs:
            problems.append(f"{where}: no entry in the docstring's Attributes block")
        elif (numeric_kind(hints[name]) is None) != (docs[name].range is None):
            problems.append(f"{where}: a range must be given exactly for numeric keys")
        if dataclasses.is_dataclass(hints[name]):
            problems += undocumented(hints[name])
    problems += [f"{cls.__name__}.{k}: documented but not a field" for k in docs if k not in names]
    return problems + (undocumented(RewardSpec) if cls is Config else [])


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None or isinstance(value, bool | dict | tuple | list):
        text = yaml.safe_dump(
            list(value) if isinstance(value, tuple) else value, default_flow_style=True, width=999
        )
        return f"`{text.strip().removesuffix('...').strip()}`"
    return f"`{value!r}`" if isinstance(value, float) else f"`{value}`"


def _table(cls, prefix: str) -> list[str]:
    docs, hints = key_docs(cls), typing.get_type_hints(cls)
    rows = ["| key | default | range | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        doc = docs[f.name]
        cell = f"`{doc.range}`" if doc.range else ""
        meaning = doc.doc.replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_default(f)} | {cell} | {meaning} |")
    return rows


def reference() -> str:
    """The generated part of `docs/config.md`: one table per section, in `Config`'s order."""
    out = [MARKER, "", "## Top-level keys", "", *_table(Config, ""), ""]
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        cls = hints[f.name]
        if dataclasses.is_dataclass(cls):
            summary = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            summary = summary.removeprefix(f"`{f.name}.*`: ")
            summary = summary[:1].upper() + summary[1:]
            out += [f"## `{f.name}`", "", summary, "", *_table(cls, f"{f.name}."), ""]
            for sub in dataclasses.fields(cls):  # a nested section (`model.lora`)
                inner = typing.get_type_hints(cls)[sub.name]
                if dataclasses.is_dataclass(inner):
                    name = f"{f.name}.{sub.name}"
                    out += [f"### `{name}`", "", *_table(inner, f"{name}."), ""]
            if f.name == "rewards":
                out += [f"Each entry of `rewards.functions`: {key_docs(cls)['functions'].doc}", ""]
                out += [*_table(RewardSpec, "rewards.functions[]."), ""]
    return "\n".join(out)


def page(text: str) -> str:
    """`text` (the current page) with everything after `MARKER` regenerated."""
    head = text.split(MARKER)[0] if MARKER in text else text.rstrip() + "\n\n"
    return head + reference()


def main(argv: list[str]) -> int:
    current = PAGE.read_text() if PAGE.exists() else "# Config reference\n"
    if "--check" in argv:
        stale = page(current) != current
        print(f"{PAGE}: {'stale' if stale else 'up to date'}")
        return int(stale)
    problems = undocumented()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    PAGE.write_text(page(current))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
