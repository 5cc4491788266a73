"""Typed, frozen run configuration read from YAML with dotted command-line overrides.

Every section is a frozen `kw_only` dataclass validated in `__post_init__`; its keys are
documented, and numeric ones given their range, in its docstring (`config.keys`), from which
`docs/config.md` is generated (`python -m jaxrl_lrm.config.reference`). `load_config` rejects
unknown keys, ill-typed or out-of-range values and keys that would have no effect with an
error naming the dotted key, the value and what is allowed.
"""

from jaxrl_lrm.config.keys import ConfigError, check, check_ranges, key_docs
from jaxrl_lrm.config.load import (
    apply_overrides,
    differences,
    from_dict,
    load_config,
    read_yaml,
    save_config,
    to_dict,
    to_yaml,
)
from jaxrl_lrm.config.sections import (
    DEFAULT_PRESET,
    DataSection,
    EnvSection,
    EvalSection,
    LogSection,
    LoraSection,
    MeshSection,
    ModelSection,
    RewardSpec,
    RewardsSection,
    SamplingSection,
    SFTSection,
)
from jaxrl_lrm.config.training import ALGORITHMS, STAGES, AlgorithmSection, Config, TrainSection

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PRESET",
    "STAGES",
    "AlgorithmSection",
    "Config",
    "ConfigError",
    "DataSection",
    "EnvSection",
    "EvalSection",
    "LogSection",
    "LoraSection",
    "MeshSection",
    "ModelSection",
    "RewardSpec",
    "RewardsSection",
    "SFTSection",
    "SamplingSection",
    "TrainSection",
    "apply_overrides",
    "check",
    "check_ranges",
    "differences",
    "from_dict",
    "key_docs",
    "load_config",
    "read_yaml",
    "save_config",
    "to_dict",
    "to_yaml",
]
