"""Tokenizers with one small interface: a character tokenizer and a Hugging Face wrapper.

Both expose `pad_id`, `eos_id`, `bos_id`, `vocab_size`, `chat_template`, `encode(text)`,
`decode(ids, skip_special_tokens=True)` and `save_pretrained(dir)`; `load_tokenizer(path)`
picks the right one from what the directory holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

CHAR_TOKENIZER_FILE = "char_tokenizer.json"
_SPECIALS = ("<pad>", "<eos>", "<bos>")


class CharTokenizer:
    """One token per character of a fixed alphabet, after three special tokens.

    Ids: 0 = `<pad>`, 1 = `<eos>`, 2 = `<bos>`, then the alphabet's characters in order.
    `encode` adds no special tokens; callers add `bos_id` / `eos_id` where they want them.
    """

    chat_template = None

    def __init__(self, alphabet: str):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet={alphabet!r}: expected a non-empty string")
        seen: dict[str, int] = {}
        for i, ch in enumerate(alphabet):
            if ch in seen:
                raise ValueError(
                    f"alphabet={alphabet!r}: character {ch!r} appears twice "
                    f"(positions {seen[ch]} and {i}); expected distinct characters"
                )
            seen[ch] = i
        self.alphabet = alphabet
        self.pad_id, self.eos_id, self.bos_id = 0, 1, 2
        self.vocab_size = len(_SPECIALS) + len(alphabet)
        self._to_id = {ch: i + len(_SPECIALS) for i, ch in enumerate(alphabet)}

    def encode(self, text: str) -> list[int]:
        """Maps each character of `text` to its id (no special tokens added)."""
        ids = []
        for pos, ch in enumerate(text):
            i = self._to_id.get(ch)
            if i is None:
                raise ValueError(
                    f"character {ch!r} at position {pos} of {text!r} is not in the "
                    f"alphabet {self.alphabet!r}"
                )
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Maps ids back to text; special tokens are dropped, or written as `<pad>` etc."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} is out of range; expected 0 <= id < {self.vocab_size}"
                )
            if i < len(_SPECIALS):
                if not skip_special_tokens:
                    out.append(_SPECIALS[i])
            else:
                out.append(self.alphabet[i - len(_SPECIALS)])
        return "".join(out)

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes `char_tokenizer.json` into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CHAR_TOKENIZER_FILE).write_text(
            json.dumps({"type": "char", "alphabet": self.alphabet}, ensure_ascii=False)
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CharTokenizer:
        """Reads the tokenizer that `save_pretrained` wrote into `directory`."""
        file = Path(directory) / CHAR_TOKENIZER_FILE
        if not file.is_file():
            raise ValueError(
                f"{str(file)!r} does not exist; expected a directory written by "
                f"CharTokenizer.save_pretrained"
            )
        data = json.loads(file.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("alphabet"), str):
            raise ValueError(f"{str(file)!r}: expected a JSON object with a string 'alphabet'")
        return cls(data["alphabet"])

    def __repr__(self) -> str:
        return f"CharTokenizer(alphabet={self.alphabet!r})"


class HFTokenizer:
    """A `transformers` tokenizer behind the same small interface as `CharTokenizer`.

    `pad_id` falls back to `eos_id` when the tokenizer has no pad token (common for causal
    LMs); `bos_id` is None when it has no BOS token. `encode` adds no special tokens: the chat
    template or the prompt template already writes whatever the model expects.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.vocab_size = len(tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> HFTokenizer:
        """Loads with `AutoTokenizer.from_pretrained(directory, local_files_only=True)`."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(directory), local_files_only=True))

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict]) -> str:
        """Renders `messages` with the chat template, ending with the generation prompt."""
        if self.chat_template is None:
            raise ValueError(
                "this tokenizer has no chat_template; use template='r1' or "
                "'plain', or a tokenizer that ships one"
            )
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.tokenizer).__name__}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path) -> CharTokenizer | HFTokenizer:
    """Loads the tokenizer saved in the local directory `path` (never downloads).

    A `char_tokenizer.json` there gives a `CharTokenizer`; otherwise the directory must hold
    Hugging Face tokenizer files (`tokenizer.json`, `tokenizer_config.json`, ...).
    """
    path = Path(path)
    if (path / CHAR_TOKENIZER_FILE).is_file():
        return CharTokenizer.from_pretrained(path)
    hf_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not path.is_dir() or not any((path / f).is_file() for f in hf_files):
        raise ValueError(
            f"tokenizer path {str(path)!r} holds neither {CHAR_TOKENIZER_FILE} nor "
            f"Hugging Face tokenizer files (one of {list(hf_files)})"
        )
    return HFTokenizer.from_pretrained(path)
