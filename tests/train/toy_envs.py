"""Environments for trainer tests (importable as `toy_envs:NAME` from tests/train)."""

import dataclasses

from jaxrl_lrm.envs import Step


@dataclasses.dataclass
class CountEpisode:
    """A turn that ends in "e" (the tests' `env.stop`) is answered with "3" repeated (turn number) times and a turn
    reward of 0.25; any other turn, or the third, ends the episode with reward = the share of
    "2" in it. A random model over digits gets several turns, observations and rewards."""

    turns: int = 0

    def step(self, turn: str) -> Step:
        self.turns += 1
        if not turn.endswith("e") or self.turns >= 3:
            return Step(observation=None, reward=turn.count("2") / max(len(turn), 1), done=True)
        return Step(observation="3" * self.turns, reward=0.25, tool_calls=1)


def make_count_env():
    return lambda row: CountEpisode()


@dataclasses.dataclass
class ParityEpisode(CountEpisode):
    """As `CountEpisode`, but only the last turn scores: 1 when its length is even, else 0."""

    def step(self, turn: str) -> Step:
        out = super().step(turn)
        return dataclasses.replace(out, reward=float(out.done and len(turn) % 2 == 0))


def make_parity_env():
    return lambda row: ParityEpisode()
