"""Helpers shared by the test modules (a test module never imports another)."""

import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from machine_translation.config.compose import (
    CONFIG_DIR,
    PROJECT_ROOT,
    register_configs,
    to_train_config,
)

# A text a tiny GPT learns by heart in a few hundred steps: one line, repeated.
VERSE = "To be, or not to be, that is the question.\n"


def run_translate(*arguments, stdin: str | bytes = "", **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "machine_translation.translate", *arguments],
        cwd=PROJECT_ROOT,
        input=stdin,
        capture_output=True,
        text=isinstance(stdin, str),
        timeout=300,
        **kwargs,
    )


def compose_config(runs_dir: Path, *overrides: str):
    """The training config of ``+experiment=smoke`` writing under ``runs_dir``."""
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(
            "train", overrides=["+experiment=smoke", f"runs_dir={runs_dir}", *overrides]
        )
    return to_train_config(cfg)


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
