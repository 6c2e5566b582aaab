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


@pytest.fixture(scope="session")
def serve_checkpoint(smoke_run) -> Path:
    return smoke_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="session")
def serve_translator(serve_checkpoint):
    """The smoke model as ``serve`` loads it: n-best = the beam (serve_helpers)."""
    from serve_helpers import BEAM, DECODING

    from machine_translation.inference.translator import Translator

    translator = Translator(serve_checkpoint, "cpu", "fp32", DECODING, nbest=BEAM)
    yield translator
    translator.close()


@pytest.fixture(scope="module")
def serve_url(serve_translator):
    """The base URL of a real server of :func:`serve_translator` on 127.0.0.1,
    with the small limits of ``serve_helpers.LIMITS`` and no API key."""
    from serve_helpers import LIMITS, running_server

    with running_server(serve_translator, LIMITS) as (url, _):
        yield url
