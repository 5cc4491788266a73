"""Token-level reward functions for trainer tests (importable as `dense_toy:NAME`)."""

CALLS: list[list[str]] = []  # the completions of every call, in order


def every_char(prompts, completions, **_):
    """Reward 1 at every '1' character: the pair `(i + 1, 1.0)` for each '1' at position i."""
    CALLS.append(list(completions))
    return [[(i + 1, 1.0) for i, ch in enumerate(c) if ch == "1"] for c in completions]


every_char.token_level = True
