"""The run config: typed dataclasses per section (schema.py), loaded from YAML with dotted
overrides and the lai section resolved (load.py; the old flat lai keys: moved.py, and the file
rewriter migrate.py), assembled as Config and validated before anything starts (validate.py; the
batch triple and lai.select's pool size in batch.py).

    cfg = load_config("configs/tiny_cpu.yaml", ["train.steps=20", "lai.filter.kind=random"])
    cfg.validate(world=2)                # batch triple, ranges, data paths, LAI options

Every error is a one-line UserError naming the file/field. What is derived from it lives with its
user: the DeepSpeed JSON in pipeline.train.engine (ds_config), the resume rules in
pipeline.train.checkpointing.resume.
"""
from pipeline.config.load import config_from_dict, load_config, save_yaml
from pipeline.config.schema import (CHOICES, DataConfig, LogConfig, ModelConfig, RunConfig,
                                    SourceConfig, TrainConfig)
from pipeline.config.validate import Config, validate
from pipeline.lai.selection.settings import LAISettings

__all__ = ["CHOICES", "Config", "DataConfig", "LAISettings", "LogConfig", "ModelConfig",
           "RunConfig", "SourceConfig", "TrainConfig", "config_from_dict", "load_config",
           "save_yaml", "validate"]
