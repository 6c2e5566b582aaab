"""Fixtures of the serving tests: the smoke model's translator and real servers."""

from __future__ import annotations

import pytest
from serve_helpers import running_server

from machine_translation.config.schema import DecodingConfig
from machine_translation.inference.translator import Translator
from machine_translation.serving.settings import ServeSettings

BEAM = 4
# Small limits, so that the tests can pass them with small requests.
LIMITS = ServeSettings(max_characters=400, max_texts=20, max_body_bytes=16_000)


@pytest.fixture(scope="session")
def checkpoint(smoke_run):
    return smoke_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="session")
def decoding():
    return DecodingConfig(beam_size=BEAM)


@pytest.fixture(scope="session")
def translator(checkpoint, decoding):
    """As ``serve`` loads it: every alternative of the beam."""
    translator = Translator(checkpoint, "cpu", "fp32", decoding, nbest=BEAM)
    yield translator
    translator.close()


@pytest.fixture(scope="module")
def server(translator):
    """The base URL of a server with :data:`LIMITS` (no API key)."""
    with running_server(translator, LIMITS) as (url, _):
        yield url
