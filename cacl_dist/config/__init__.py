"""Typed run configuration: the schema, strict YAML loading, `--set` overrides and validation.

- :mod:`.schema`: one dataclass per concern with a docstring under every field;
- :mod:`.loading`: YAML and overrides in, type checks, YAML and the key reference out;
- :mod:`.validation`: the cross-field rules, checked once where a config is read;
- :mod:`.world`: the rules of a number of processes (batch split, instances, BatchNorm groups).
"""

from cacl_dist.config.loading import (apply_overrides, config_from_dict, describe, dump_yaml, load_config, parse_override,
                      to_dict)
from cacl_dist.config.schema import (CheckpointConfig, Config, DistConfig, EvalConfig, LossConfig, MemoryConfig,
                                     ModelConfig, OptimConfig, RunConfig, TrainConfig)
from cacl_dist.config.validation import validate
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.data.settings import AugmentConfig, DataConfig, SyntheticConfig
from cacl_dist.errors import ConfigError
from cacl_dist.config.world import validate_for_world

__all__ = ["AugmentConfig", "CheckpointConfig", "ClusterParams", "Config", "ConfigError", "DataConfig",
           "DistConfig", "EvalConfig", "LossConfig", "MemoryConfig", "ModelConfig", "OptimConfig", "RunConfig",
           "SyntheticConfig", "TrainConfig", "apply_overrides", "config_from_dict", "describe", "dump_yaml",
           "load_config", "parse_override", "to_dict", "validate", "validate_for_world"]
