"""Prompt templates against hand-written expected strings."""

import pytest

from jaxrl_lrm.data.templates import R1_SYSTEM, R1_TEMPLATE, render_prompt
from jaxrl_lrm.data.tokenizer import CharTokenizer


class ChatTok:
    """A stand-in with a chat template: renders `[role] content` lines, then `[assistant]`."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages):
        return "".join(f"[{m['role']}] {m['content']}\n" for m in messages) + "[assistant] "


def test_r1_template_text():
    expected = R1_SYSTEM + "\nUser: What is 2+3?\nAssistant: <think>"
    assert render_prompt("What is 2+3?", CharTokenizer("0"), "r1") == expected
    assert render_prompt("What is 2+3?", None, "r1") == expected
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in R1_SYSTEM
    assert R1_TEMPLATE.endswith("Assistant: <think>")
    assert render_prompt("Q", None, "r1", system="Sys.") == "Sys.\nUser: Q\nAssistant: <think>"


def test_auto_picks_chat_or_r1():
    assert render_prompt("Q?", ChatTok()) == "[user] Q?\n[assistant] "
    assert render_prompt("Q?", ChatTok(), system="S") == "[system] S\n[user] Q?\n[assistant] "
    assert render_prompt("Q?", CharTokenizer("Q?")) == render_prompt("Q?", None, "r1")


def test_plain():
    assert render_prompt("001+002=", CharTokenizer("0"), "plain") == "001+002="
    assert render_prompt("Q", None, "plain", system="S") == "S\n\nQ"


def test_chat_template_with_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from jaxrl_lrm.data.tokenizer import load_tokenizer

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>")
    hf.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    hf.save_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    assert render_prompt("2+2?", tok) == "<user>2+2?\n<assistant>"
    assert render_prompt("2+2?", tok, "chat", system="Think.") == (
        "<system>Think.\n<user>2+2?\n<assistant>"
    )


def test_errors():
    with pytest.raises(ValueError, match="template='chat'"):
        render_prompt("Q", CharTokenizer("Q"), "chat")
    with pytest.raises(ValueError, match="template='fancy'"):
        render_prompt("Q", None, "fancy")
    with pytest.raises(ValueError, match="question=3"):
        render_prompt(3, None, "plain")
