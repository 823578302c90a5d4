"""Typed recipes: one section per concern and per stage (:mod:`.sections`), loaded from YAML
with dotted command-line overrides and validated strictly (:mod:`.loader`)."""

from ..errors import ConfigError
from .loader import dump_recipe, load_recipe, parse_override, redact
from .sections import (
                       AUTO_ATTENTION,
                       FLASH_ATTENTION,
                       NEUTRAL_KEYS,
                       PADDING_FREE_ATTENTION,
                       DataConfig,
                       DpoConfig,
                       EvalConfig,
                       HubConfig,
                       InferConfig,
                       IpmConfig,
                       JudgeConfig,
                       LoraConfig,
                       MineConfig,
                       ModelConfig,
                       PipelineConfig,
                       Recipe,
                       RunConfig,
                       SftConfig,
                       TinyModelConfig,
                       TrainConfig,
                       WandbConfig,
                       key_view,
)

__all__ = ["AUTO_ATTENTION", "ConfigError", "DataConfig", "DpoConfig", "EvalConfig",
           "FLASH_ATTENTION", "HubConfig", "InferConfig", "IpmConfig", "JudgeConfig", "LoraConfig",
           "MineConfig", "ModelConfig", "NEUTRAL_KEYS", "PADDING_FREE_ATTENTION", "PipelineConfig",
           "Recipe", "RunConfig", "SftConfig", "TinyModelConfig", "TrainConfig", "WandbConfig",
           "dump_recipe", "key_view", "load_recipe", "parse_override", "redact"]
