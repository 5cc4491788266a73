"""Reward functions for trainer tests (importable as `toy_rewards:NAME` from tests/rl)."""

import os
import signal

_seen = {"samples": 0, "sent": False}


def ones_fraction(prompts, completions, **_):
    """Dense, easy signal: the share of '1' characters in the completion."""
    return [c.count("1") / max(len(c), 1) for c in completions]


def always_raises(prompts, completions, **_):
    raise RuntimeError("this reward function is broken on purpose")


def sigterm_in_second_step(prompts, completions, group_size, **_):
    """Sends SIGTERM to this very process once it has scored more than one step's samples
    (16 on the smoke config): a preempted VM in the middle of step 2."""
    _seen["samples"] += len(completions)
    if _seen["samples"] > 16 and not _seen["sent"]:
        _seen["sent"] = True
        os.kill(os.getpid(), signal.SIGTERM)
    return [0.0] * len(completions)


def constant_one(prompts, completions, **_):
    """Reward 1 for everything: returns are 1 at every position, a target a value model fits."""
    return [1.0] * len(completions)


def ones_fraction_odd_prompts(prompts, completions, **_):
    """`ones_fraction` for prompts starting with an odd digit, 0 for the rest: about half the
    groups carry no signal at all (DAPO's dynamic sampling must replace them)."""
    return [
        c.count("1") / max(len(c), 1) if p[:1].isdigit() and int(p[0]) % 2 else 0.0
        for p, c in zip(prompts, completions)
    ]


def exits_zero(prompts, completions, **_):
    """A reward function that ends its process with status 0 (it must not end training)."""
    raise SystemExit(0)
