"""From Hydra's YAML to the typed configs: composition, conversion, model configs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from encoder_transformer.config import TransformerConfig
from machine_translation.config.schema import (
    DecodingConfig,
    GPTTrainConfig,
    TrainConfig,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def build_model_config(
    node: Mapping[str, Any] | DictConfig, **overrides: Any
) -> TransformerConfig:
    """The one place a model config node becomes a :class:`TransformerConfig`.

    Args:
        node: The ``model`` config group (a ``DictConfig`` or plain mapping).
        **overrides: Fields decided elsewhere, e.g. ``vocab_size`` from the tokenizer.

    Raises:
        ValueError: naming an unknown key or an impossible value.

    >>> build_model_config({"d_model": 64, "n_heads": 2}, vocab_size=100).vocab_size
    100
    """
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return TransformerConfig.from_dict({**node, **overrides})


def load_model_config(name_or_path: str | Path, **overrides: Any) -> TransformerConfig:
    """Reads ``conf/model/<name>.yaml`` (or a YAML file path) into a config.

    Raises:
        FileNotFoundError: when no such file exists.
        ValueError: naming an unknown key or an impossible value.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / "model" / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
        raise FileNotFoundError(
            f"no model config {str(name_or_path)!r}; available: {', '.join(available)}"
        )
    return build_model_config(OmegaConf.load(path), **overrides)


def default_run_name() -> str:
    """The run name of the default training config (``name`` in ``conf/train.yaml``).

    The command lines look for this run when no checkpoint or run name is given, so
    that a model trained with another name (an experiment) is never used silently.

    >>> default_run_name()
    'en-fr'
    """
    return str(OmegaConf.load(CONFIG_DIR / "train.yaml").name)


def register_configs() -> None:
    """Registers the schemas that ``conf/train.yaml`` and ``conf/gpt.yaml`` name."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="gpt_schema", node=GPTTrainConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig | GPTTrainConfig:
    """The composed Hydra config as plain dataclasses (``model`` stays a dict)."""
    container = OmegaConf.to_object(cfg)
    assert isinstance(container, TrainConfig | GPTTrainConfig)
    return container


def load_decoding_config(name: str = "default", **overrides: Any) -> DecodingConfig:
    """``conf/decoding/<name>.yaml`` as a :class:`DecodingConfig`, with overrides
    (the command-line options of ``translate`` and ``evaluate``; None keeps the
    file's value).

    Raises:
        ValueError: naming a field whose value is out of range.

    >>> load_decoding_config(beam_size=1).beam_size
    1
    """
    node = OmegaConf.merge(
        OmegaConf.structured(DecodingConfig),
        OmegaConf.load(CONFIG_DIR / "decoding" / f"{name}.yaml"),
    )
    fields = OmegaConf.to_container(node)
    fields.update({key: value for key, value in overrides.items() if value is not None})
    return DecodingConfig(**fields)
