"""Fixtures for the application tests: composed configs and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from machine_translation.config import (
    CONFIG_DIR,
    PROJECT_ROOT,
    register_configs,
    to_train_config,
)

__all__ = ["PROJECT_ROOT", "compose_config"]


def compose_config(runs_dir: Path, *overrides: str):
    """The training config of ``+experiment=smoke`` writing under ``runs_dir``."""
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(
            "train", overrides=["+experiment=smoke", f"runs_dir={runs_dir}", *overrides]
        )
    return to_train_config(cfg)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A run directory of the smoke experiment (tiny model, 60 steps, ~10 s)."""
    from machine_translation.train import train

    return train(compose_config(tmp_path_factory.mktemp("runs")))
