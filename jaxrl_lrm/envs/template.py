"""How an observation becomes tokens: the text between the end of the assistant's tool call
and the start of its next turn, and the cap on its length.

With a chat template that defines a `tool` role (Qwen2.5/3, Hermes, Llama 3.1), the wrapper is
read off the template itself: it renders `[user, assistant "<A>", tool "<O>"]` with the
generation prompt and takes what lies between `<A>` and `<O>` as the prefix (the assistant's
end-of-turn and the tool message's header) and what follows `<O>` as the suffix (the tool
message's end and the next assistant header). Without one, `PLAIN` is used:

    <tool_call>...</tool_call>            (sampled)
    \\n<tool_response>\\n{observation}\\n</tool_response>\\n   (observation tokens)
    ...                                   (sampled: the next assistant turn)

The prefix, the (possibly cut) content and the suffix are encoded separately and concatenated,
and these token ids are what the sampler appends: nothing is ever re-tokenised.
"""

from __future__ import annotations

import dataclasses

_A, _O = "\u2063ASSISTANT\u2063", "\u2063OBSERVATION\u2063"
CUT_MARK = "\n[output truncated]"


@dataclasses.dataclass(frozen=True)
class ObservationTemplate:
    """`prefix + content + suffix`; see the module docstring."""

    prefix: str
    suffix: str

    def render(self, content: str) -> str:
        return f"{self.prefix}{content}{self.suffix}"


PLAIN = ObservationTemplate(prefix="\n<tool_response>\n", suffix="\n</tool_response>\n")


def from_tokenizer(tokenizer) -> ObservationTemplate:
    """The template's own tool-message wrapper when its chat template has a tool role, else
    `PLAIN` (see the module docstring)."""
    hf = getattr(tokenizer, "tokenizer", None)
    if getattr(tokenizer, "chat_template", None) is None or hf is None:
        return PLAIN
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": _A},
        {"role": "tool", "content": _O},
    ]
    try:
        text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:  # a template without a tool role raises (TemplateError) or drops it
        return PLAIN
    if text.count(_A) != 1 or text.count(_O) != 1 or text.index(_A) > text.index(_O):
        return PLAIN
    between = text[text.index(_A) + len(_A) :]
    prefix, suffix = between.split(_O)
    return ObservationTemplate(prefix=prefix, suffix=suffix)


def observation_tokens(
    tokenizer, template: ObservationTemplate, content: str, max_tokens: int
) -> tuple[list[int], bool]:
    """The observation's token ids and whether its content was cut to `max_tokens` tokens
    (then `CUT_MARK` is appended, its tokens beyond the cap; the wrapper never counts)."""
    if not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens={max_tokens!r}: expected an integer >= 1")
    ids = tokenizer.encode(content)
    cut = len(ids) > max_tokens
    if cut:
        ids = ids[:max_tokens] + tokenizer.encode(CUT_MARK)
    return tokenizer.encode(template.prefix) + ids + tokenizer.encode(template.suffix), cut
