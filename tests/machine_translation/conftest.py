"""Fixtures for the application tests: composed configs and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from machine_translation.config.compose import (
    CONFIG_DIR,
    PROJECT_ROOT,
    register_configs,
    to_train_config,
)

__all__ = ["PROJECT_ROOT", "compose_config", "compose_gpt_config"]

# A text a tiny GPT learns by heart in a few hundred steps: one line, repeated.
VERSE = "To be, or not to be, that is the question.\n"


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
    from machine_translation.training.recipes import train

    return train(compose_config(tmp_path_factory.mktemp("runs")))


def compose_gpt_config(runs_dir: Path, *overrides: str):
    """The GPT mode's config (``--config-name gpt``) sized for tests."""
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(
            "gpt",
            overrides=[
                f"runs_dir={runs_dir}",
                "model=tiny",
                "data.block_size=32",
                "data.batch_size=8",
                "schedule.warmup_steps=20",
                "optim.lr=3e-3",
                "trainer.max_minutes=null",
                "trainer.precision=fp32",
                "trainer.progress=false",
                *overrides,
            ],
        )
    return to_train_config(cfg)


@pytest.fixture(scope="session")
def verse_run(tmp_path_factory) -> Path:
    """A tiny GPT run that has learned :data:`VERSE` by heart (~5 s)."""
    from machine_translation.training.recipes import train

    root = tmp_path_factory.mktemp("gpt")
    (root / "verse.txt").write_text(VERSE * 60, encoding="utf-8")
    return train(
        compose_gpt_config(
            root / "runs",
            f"data.path={root / 'verse.txt'}",
            "trainer.max_steps=250",
            "trainer.eval_every=125",
        )
    )
