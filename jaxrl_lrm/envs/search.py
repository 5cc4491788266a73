"""The built-in `search` tool: BM25 over a local JSONL corpus (no network, no extra library).

A corpus is a JSONL file, one document per line: an object with a `text` field and optionally
`title` and `id`. Documents are tokenised into lower-case alphanumeric words; a query's score
for a document is Okapi BM25 (Robertson & Zaragoza 2009),

    score(q, d) = sum over query words w of idf(w) * f(w, d) * (k1 + 1)
                  / (f(w, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(w) = ln(1 + (N - n(w) + 0.5) / (n(w) + 0.5)),

with f the word's count in d, |d| the document's length in words, N documents, n(w) of them
containing w, k1 = 1.5, b = 0.75 (the Lucene form of idf, which is never negative). Ties keep
corpus order. The index is built once per process and file (and rebuilt if the file changes).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import re

_WORD = re.compile(r"[0-9a-z]+")
K1 = 1.5
B = 0.75
MAX_RESULTS = 10


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words of `text`."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Index:
    """A BM25 index: documents, per-document word counts, document frequencies."""

    docs: tuple[dict, ...]
    counts: tuple[collections.Counter, ...]
    lengths: tuple[int, ...]
    df: dict[str, int]

    def scores(self, query: str, k1: float = K1, b: float = B) -> list[float]:
        """BM25 score of every document for `query` (the module docstring's formula)."""
        n = len(self.docs)
        avgdl = sum(self.lengths) / n if n else 0.0
        out = [0.0] * n
        for w in set(words(query)):
            df = self.df.get(w, 0)
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for i, (c, dl) in enumerate(zip(self.counts, self.lengths)):
                f = c.get(w, 0)
                if f:
                    out[i] += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / avgdl))
        return out

    def top(self, query: str, k: int) -> list[tuple[float, dict]]:
        """The `k` best documents with a positive score, best first (ties in corpus order)."""
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(scores[i], self.docs[i]) for i in order[:k] if scores[i] > 0]


def build_index(docs: list[dict]) -> Index:
    """An `Index` over documents with a `text` field (and optional `title`)."""
    counts = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise ValueError(f"document {i} is {d!r}: expected an object with a string 'text'")
        counts.append(collections.Counter(words(f"{d.get('title', '')} {d['text']}")))
    df = collections.Counter(w for c in counts for w in c)
    return Index(
        docs=tuple(docs),
        counts=tuple(counts),
        lengths=tuple(sum(c.values()) for c in counts),
        df=dict(df),
    )


def read_corpus(path: str) -> list[dict]:
    """The documents of a JSONL corpus; a bad line is an error naming the file and line."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string 'text'")
            docs.append(doc)
    return docs


@functools.lru_cache(maxsize=8)
def _cached_index(path: str, mtime_ns: int, size: int) -> Index:
    return build_index(read_corpus(path))


def load_index(path: str) -> Index:
    """The index of the corpus at `path`, cached per process until the file changes."""
    st = os.stat(path)
    return _cached_index(os.path.abspath(path), st.st_mtime_ns, st.st_size)


def search(query: str, *, corpus: str, k: int = 3) -> str:
    """The tool: the `k` best passages for `query`, one block each (`[id] title: text`)."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    if not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise ValueError(f"k={k!r}: expected an integer in [1, {MAX_RESULTS}]")
    hits = load_index(corpus).top(query, k)
    if not hits:
        return "no results"
    blocks = []
    for _, doc in hits:
        head = f"[{doc['id']}] " if "id" in doc else ""
        head += f"{doc['title']}: " if doc.get("title") else ""
        blocks.append(head + doc["text"])
    return "\n\n".join(blocks)
