"""Prompt templates: turn a question into the text the policy continues.

- "chat": the tokenizer's own chat template (system + user message, or a row's whole
  conversation, generation prompt added).
- "r1": `R1_TEMPLATE`, a DeepSeek-R1-Zero style plain-text dialogue that ends inside an opened
  `<think>` tag, for base models without a chat template.
- "plain": the question itself.
- "auto": "chat" when the tokenizer has a chat template, else "r1".
"""

from __future__ import annotations

TEMPLATES = ("auto", "chat", "r1", "plain")

R1_SYSTEM = (
    "The following is a conversation between a User and an Assistant. The User poses a "
    "problem and the Assistant solves it. Before answering, the Assistant reasons the problem "
    "through step by step in its mind, then gives the User the final answer. The reasoning is "
    "written inside <think> </think> tags and the final answer inside <answer> </answer> tags, "
    "that is: <think> reasoning here </think> <answer> answer here </answer>."
)

R1_TEMPLATE = "{system}\nUser: {question}\nAssistant: <think>"


def check_messages(messages, where: str = "question") -> None:
    """Raises `ValueError` unless `messages` is a conversation in TRL's format: a non-empty
    list of `{"role": str, "content": str}` dicts."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"{where}={messages!r:.120}: expected a string or a non-empty list of messages"
        )
    for i, m in enumerate(messages):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise ValueError(
                f"{where}[{i}]={m!r:.120}: expected a message "
                '{"role": "system" | "user" | "assistant", "content": "..."}'
            )


def render_prompt(
    question: str | list[dict], tokenizer=None, template: str = "auto", system: str | None = None
) -> str:
    """Renders `question` into prompt text with the chosen template.

    Args:
      question: the raw question (a row's `prompt` field): a string, or a conversation (a list
        of `{"role", "content"}` messages, TRL's conversational format), which needs "chat".
      tokenizer: anything with a `chat_template` attribute and, for "chat", an
        `apply_chat_template(messages) -> str` method (`HFTokenizer`); may be None for "r1"
        and "plain".
      template: "auto", "chat", "r1" or "plain".
      system: for "chat", a system message put first (a conversation that has its own system
        message refuses a second one); for "r1", replaces the default instructions
        `R1_SYSTEM`; for "plain", written before the question with a blank line.

    Returns:
      The prompt text, not yet tokenized.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: expected one of {TEMPLATES}")
    conversation = not isinstance(question, str)
    if conversation:
        check_messages(question)
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        template = "chat" if has_chat else "r1"
    if template != "chat" and conversation:
        raise ValueError(
            f"a conversational prompt (a list of messages) needs the chat template; "
            f"template={template!r} (with tokenizer {tokenizer!r}) renders only strings"
        )
    if template == "chat":
        if not has_chat:
            raise ValueError(
                f"template='chat' but the tokenizer {tokenizer!r} has no "
                "chat_template; use template='r1' or 'plain'"
            )
        messages = list(question) if conversation else [{"role": "user", "content": question}]
        if system is not None:
            if any(m["role"] == "system" for m in messages):
                raise ValueError(
                    f"data.system={system!r:.60} and a prompt with its own system message "
                    f"{messages[0]!r:.80}: expected one of the two"
                )
            messages.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(messages)
    if template == "r1":
        return R1_TEMPLATE.format(system=R1_SYSTEM if system is None else system, question=question)
    return question if system is None else f"{system}\n\n{question}"
