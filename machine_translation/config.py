"""From configuration files to the typed dataclasses the library receives.

Hydra and OmegaConf stop here: the model packages only ever see a
:class:`~encoder_transformer.config.TransformerConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from encoder_transformer.config import TransformerConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


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
