"""Prompt templates: turn a question into the text the policy continues.

- "chat": the tokenizer's own chat template (system + user message, generation prompt added).
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


def render_prompt(
    question: str, tokenizer=None, template: str = "auto", system: str | None = None
) -> str:
    """Renders `question` into prompt text with the chosen template.

    Args:
      question: the raw question (a row's `prompt` field).
      tokenizer: anything with a `chat_template` attribute and, for "chat", an
        `apply_chat_template(messages) -> str` method (`HFTokenizer`); may be None for "r1"
        and "plain".
      template: "auto", "chat", "r1" or "plain".
      system: for "chat", an optional system message; for "r1", replaces the default
        instructions `R1_SYSTEM`; for "plain", written before the question with a blank line.

    Returns:
      The prompt text, not yet tokenized.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: expected one of {TEMPLATES}")
    if not isinstance(question, str):
        raise ValueError(f"question={question!r}: expected a string")
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        template = "chat" if has_chat else "r1"
    if template == "chat":
        if not has_chat:
            raise ValueError(
                f"template='chat' but the tokenizer {tokenizer!r} has no "
                "chat_template; use template='r1' or 'plain'"
            )
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages)
    if template == "r1":
        return R1_TEMPLATE.format(system=R1_SYSTEM if system is None else system, question=question)
    return question if system is None else f"{system}\n\n{question}"
