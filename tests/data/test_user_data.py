"""A user's own data at load: conversational rows (TRL's format), `"answer": null` refused,
and prompts over `data.max_prompt_len` filtered, truncated or refused once, with a count."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrl_lrm.data.overlong import KeptSource, fit_source, overlong_indices
from jaxrl_lrm.data.sources import JsonlSource, ListSource, ParquetSource
from jaxrl_lrm.data.templates import render_prompt


class ChatTok:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages):
        return "".join(f"[{m['role']}] {m['content']}\n" for m in messages) + "[assistant] "


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversational_rows_render_through_the_chat_template(tmp_path):
    src = JsonlSource(_jsonl(tmp_path / "c.jsonl", [{"prompt": CONVERSATION, "answer": "4"}]))
    assert src[0]["prompt"] == CONVERSATION
    assert render_prompt(src[0]["prompt"], ChatTok()) == (
        "[system] Be brief.\n[user] 2+2?\n[assistant] "
    )
    user_only = CONVERSATION[1:]
    assert (
        render_prompt(user_only, ChatTok(), system="S") == "[system] S\n[user] 2+2?\n[assistant] "
    )
    with pytest.raises(ValueError, match="data.system='S' and a prompt with its own system"):
        render_prompt(CONVERSATION, ChatTok(), system="S")
    for template in ("r1", "plain"):
        with pytest.raises(ValueError, match=f"needs the chat template; template='{template}'"):
            render_prompt(CONVERSATION, ChatTok(), template)
    with pytest.raises(ValueError, match="needs the chat template; template='r1'"):
        render_prompt(CONVERSATION, None)  # auto without a chat template is r1


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], r"=\[\]: expected a string or a non-empty list of messages"),
        ([{"role": "user"}], r"\[0\]=\{'role': 'user'\}: expected a message"),
        ([{"role": "user", "content": 3}], r"\[0\]=.*: expected a message"),
        (7, r"=7: expected a string or a non-empty list"),
    ],
)
def test_malformed_prompts_are_refused_at_load(tmp_path, prompt, message):
    path = _jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, {"prompt": prompt, "answer": "1"}]
    )
    with pytest.raises(ValueError, match=f"line 2: prompt{message}"):
        JsonlSource(path)


def test_null_answers_are_refused_at_load(tmp_path):
    path = _jsonl(
        tmp_path / "n.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]
    )
    with pytest.raises(ValueError, match=r"line 2: field 'answer' is null; expected the gold"):
        JsonlSource(path)
    with pytest.raises(ValueError, match=r"rows\[1\]: field 'gold' is null"):
        ListSource([{"q": "a", "gold": 1}, {"q": "b", "gold": None}], "q", "gold")
    table = pa.table({"prompt": ["a", "b", "c"], "answer": ["1", None, "3"]})
    pq.write_table(table, tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"row 1: field 'answer' is null"):
        ParquetSource(tmp_path / "n.parquet")  # at load, not when row 1 is drawn


ROWS = [{"prompt": "x" * n, "answer": str(n)} for n in (3, 9, 5, 12, 8, 2)]
LENGTH = lambda row: len(row["prompt"])  # noqa: E731


def test_filter_drops_overlong_rows_and_logs_the_count(caplog):
    src = ListSource(ROWS)
    with caplog.at_level(logging.INFO, logger="jaxrl_lrm.data.overlong"):
        kept = fit_source(src, LENGTH, 8, "filter", "train prompts")
    assert isinstance(kept, KeptSource) and len(kept) == 4
    assert [kept[i]["answer"] for i in range(4)] == ["3", "5", "8", "2"]
    assert "2 of 6 train prompts are longer than data.max_prompt_len=8" in caplog.text
    assert "the first is item 1, 9 tokens" in caplog.text
    assert fit_source(src, LENGTH, 12, "filter", "p") is src  # nothing over: the same source


def test_truncate_keeps_every_row_and_error_names_the_first(caplog):
    src = ListSource(ROWS)
    with caplog.at_level(logging.INFO, logger="jaxrl_lrm.data.overlong"):
        assert fit_source(src, LENGTH, 8, "truncate", "train prompts") is src
    assert "each keeps its last 8 tokens" in caplog.text
    with pytest.raises(ValueError, match=r"2 of 6 eval prompts are longer .*item 1, 9 tokens"):
        fit_source(src, LENGTH, 8, "error", "eval prompts")
    with pytest.raises(ValueError, match="would leave none"):
        overlong_indices(ROWS, LENGTH, 1, "filter", "train prompts")
    with pytest.raises(ValueError, match="data.overlong='drop'"):
        overlong_indices(ROWS, LENGTH, 8, "drop", "train prompts")
