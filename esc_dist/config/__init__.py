"""Typed recipes: one section per concern and per stage (:mod:`.sections`), loaded from YAML
with dotted command-line overrides and validated strictly (:mod:`.loader`)."""

from ..errors import ConfigError
from .loader import dump_recipe, load_recipe, parse_override, redact
from .sections import (PADDING_FREE_ATTENTION, DataConfig, DpoConfig, EvalConfig, InferConfig,
                       IpmConfig, JudgeConfig, LoraConfig, MineConfig, ModelConfig, PipelineConfig, Recipe,
                       RunConfig, SftConfig, TinyModelConfig, TrainConfig, WandbConfig)

__all__ = ["ConfigError", "DataConfig", "DpoConfig", "EvalConfig", "InferConfig", "IpmConfig",
           "JudgeConfig",
           "LoraConfig", "MineConfig", "ModelConfig", "PADDING_FREE_ATTENTION", "PipelineConfig",
           "Recipe", "RunConfig", "SftConfig", "TinyModelConfig", "TrainConfig", "WandbConfig",
           "dump_recipe", "load_recipe", "parse_override", "redact"]
