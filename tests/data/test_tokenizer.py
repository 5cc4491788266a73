"""Tokenizers: the char tokenizer against hand-computed ids, the HF wrapper against a
`tokenizers` model trained in the test (no downloads)."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxrl_lrm.data.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_char_ids_by_hand():
    tok = CharTokenizer("ab+=")
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, 7)
    assert tok.encode("a+b=ba") == [3, 5, 4, 6, 4, 3]
    assert tok.encode("") == []
    assert tok.decode([2, 3, 5, 4, 1, 0, 0]) == "a+b"
    assert tok.decode([2, 3, 1, 0], skip_special_tokens=False) == "<bos>a<eos><pad>"
    assert tok.chat_template is None


def test_char_errors():
    with pytest.raises(ValueError, match=r"'a' appears twice \(positions 0 and 2\)"):
        CharTokenizer("aba")
    tok = CharTokenizer("0123456789")
    with pytest.raises(ValueError, match=r"character 'x' at position 2"):
        tok.encode("12x4")
    with pytest.raises(ValueError, match="token id 99"):
        tok.decode([99])


def test_char_save_load(tmp_path):
    tok = CharTokenizer("0123456789+= ")
    tok.save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "char_tokenizer.json").read_text())["alphabet"] == (
        "0123456789+= "
    )
    for loaded in (
        CharTokenizer.from_pretrained(tmp_path / "tok"),
        load_tokenizer(tmp_path / "tok"),
    ):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.encode("12 + 3=") == tok.encode("12 + 3=")
        assert loaded.vocab_size == 16


def _train_wordlevel():
    vocab = {
        "<unk>": 0,
        "</s>": 1,
        "<s>": 2,
        "hello": 3,
        "world": 4,
        "what": 5,
        "is": 6,
        "2": 7,
        "+": 8,
        "?": 9,
    }
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return raw, vocab


def _save_hf(tmp_path, *, pad: bool, template: str | None):
    from transformers import PreTrainedTokenizerFast

    raw, vocab = _train_wordlevel()
    kwargs = dict(tokenizer_object=raw, eos_token="</s>", bos_token="<s>", unk_token="<unk>")
    if pad:
        raw.add_special_tokens(["<pad>"])
        kwargs["pad_token"] = "<pad>"
    hf = PreTrainedTokenizerFast(**kwargs)
    if template is not None:
        hf.chat_template = template
    path = tmp_path / "hf"
    hf.save_pretrained(str(path))
    return path, raw, vocab


def test_hf_wrapper_matches_raw_tokenizer(tmp_path):
    path, raw, vocab = _save_hf(tmp_path, pad=True, template=CHAT_TEMPLATE)
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (1, 2, 10)
    assert tok.vocab_size == 11
    text = "what is 2 + 2 ?"
    assert tok.encode(text) == [5, 6, 7, 8, 7, 9]  # by hand from the vocab
    assert tok.encode(text) == raw.encode(text, add_special_tokens=False).ids
    assert tok.decode([2, 3, 4, 1, 10]) == "hello world"
    assert tok.decode([3, 1], skip_special_tokens=False) == "hello </s>"
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    )
    assert rendered == "<|system|>be brief</s><|user|>hello</s><|assistant|>"
    tok.save_pretrained(tmp_path / "again")
    assert load_tokenizer(tmp_path / "again").encode(text) == tok.encode(text)


def test_hf_pad_falls_back_to_eos_and_no_template(tmp_path):
    path, _, _ = _save_hf(tmp_path, pad=False, template=None)
    tok = load_tokenizer(path)
    assert tok.pad_id == tok.eos_id == 1
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="no chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "hello"}])


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nothing")):
        load_tokenizer(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="char_tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
