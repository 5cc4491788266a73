"""The RL algorithms as declarative choices of `losses` pieces.

`REGISTRY` (in `registry.py`) holds each algorithm's published defaults and sources;
`resolve(section)` turns the config's `algorithm` section into a hashable `AlgorithmSpec`;
`advantages(spec, ...)` and `objective(spec, ...)` are the two computations the RL core calls.
The trainer loop is the same for all of them.

| name | advantages | policy ratio / clip | aggregation | KL (beta) |
|---|---|---|---|---|
| grpo (DeepSeekMath) | (r - mean_g) / (std_g + eps) | token, 0.2 | seq-mean-token-mean | k3 in loss (0.04) |
| dr_grpo (Liu et al. 2025) | r - mean_g | token, 0.2 | seq-mean-token-sum-norm | none (0) |
| dapo (Yu et al. 2025) | (r - mean_g) / (std_g + eps) | token, 0.2 / 0.28 | token-mean | none |
| gspo (Zheng et al. 2025) | (r - mean_g) / (std_g + eps) | sequence, 3e-4 / 4e-4 | seq-mean-token-mean | none (0) |
| cispo (MiniMax-M1) | (r - mean_g) / (std_g + eps) | CISPO IS weight, <= 1.28 | token-mean | none (0) |
| rloo (Ahmadian et al. 2024) | r_i - mean of the others, KL in r | token (REINFORCE) | seq-mean-token-sum | k1 in reward (0.05) |
| reinforce_pp (Hu 2025) | whitened returns of token rewards | token, 0.2 | token-mean | k1 in reward (0.01) |
| reinforce_pp_baseline (Hu 2025) | whiten(r - mean_g), KL in r | token, 0.2 | token-mean | k1 in reward (0.01) |
| ppo (Ouyang et al. 2022) | whitened GAE on a value model | token, 0.2 | token-mean | k1 in reward (0.02) |
"""

from jaxrl_lrm.algorithms.estimators import (
    Advantages,
    advantages,
    controller_kl,
    zero_variance_group_frac,
)
from jaxrl_lrm.algorithms.objective import objective
from jaxrl_lrm.algorithms.registry import NAMES, OVERRIDABLE, REGISTRY, Preset, check_section
from jaxrl_lrm.algorithms.spec import AlgorithmSpec, explicit_keys, resolve

__all__ = [
    "NAMES",
    "OVERRIDABLE",
    "REGISTRY",
    "Advantages",
    "AlgorithmSpec",
    "Preset",
    "advantages",
    "check_section",
    "controller_kl",
    "explicit_keys",
    "objective",
    "resolve",
    "zero_variance_group_frac",
]
