"""The README stays the front page and the manual's links stay whole: README.md has at most
250 lines and exactly the two commands of its "Two commands" section (the second one is what
`.ci/run` runs verbatim), and every relative link in README.md and docs/*.md points to a file
that exists (and, for a `#fragment` into a Markdown file, to one of its headings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_COMMAND = "pip install -e . && jaxrl-lrm demo"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q -m "not slow"'
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text outside code blocks and code spans, where a Markdown link can be."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text()), re.M)
    return {_slug(h) for h in headings}


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_has_exactly_the_two_commands():
    section = _section(README.read_text(), "Two commands")
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)
    assert [(lang, body.strip()) for lang, body in blocks] == [
        ("bash", DEMO_COMMAND),
        ("bash", TEST_COMMAND),
    ]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST_COMMAND in ci


def test_docs_has_no_concatenation_leftovers():
    assert not list((ROOT / "docs").glob("_*")), "docs/ pages stand alone: no _partials"
    assert not (ROOT / "docs" / "build_readme.py").exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no heading #{fragment})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (ROOT / t.partition("#")[0]).resolve()
        for t in LINK.findall(_prose(README.read_text()))
        if t.startswith("docs/")
    }
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"not linked from README.md: {sorted(p.name for p in pages - linked)}"
