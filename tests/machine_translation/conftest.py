"""Fixtures for the application tests: composed configs and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import VERSE, compose_config, compose_gpt_config


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A run directory of the smoke experiment (tiny model, 60 steps, ~10 s)."""
    from machine_translation.training.recipes import train

    return train(compose_config(tmp_path_factory.mktemp("runs")))


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
