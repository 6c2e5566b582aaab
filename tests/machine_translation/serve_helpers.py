"""A real server on 127.0.0.1 for the serving tests, and plain HTTP calls to it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from machine_translation.config.schema import DecodingConfig
from machine_translation.inference.translator import Translator
from machine_translation.serving.app import create_app
from machine_translation.serving.service import TranslationService
from machine_translation.serving.settings import ServeSettings

BEAM = 4  # the tests' servers: beam search with every alternative of the beam
DECODING = DecodingConfig(beam_size=BEAM)
# Small limits, so that the tests can pass them with small requests.
LIMITS = ServeSettings(max_characters=400, max_texts=20, max_body_bytes=16_000)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(
    translator: Translator, settings: ServeSettings, timeout: float = 30
) -> Iterator[tuple[str, TranslationService]]:
    """Serves ``translator`` with uvicorn on a free port of 127.0.0.1, in a thread.

    Yields the base URL and the service; on exit the server shuts down as on Ctrl+C
    (in-flight requests finished, the batcher closed) within ``timeout`` seconds.
    """
    service = TranslationService(translator, settings)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(service, settings), log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, args=([listener],), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(timeout)
        listener.close()
        assert not thread.is_alive(), "the server did not stop"


def request(
    url: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """One HTTP request (POST when there is a body): ``(status, parsed JSON)``."""
    headers = {"Content-Type": content_type} if content_type else {}
    call = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw)


def post_json(url: str, payload: Any, timeout: float = 60) -> tuple[int, Any]:
    """POSTs ``payload`` as JSON (``ensure_ascii``: a lone surrogate travels as
    ``\\ud800``, as a client's JSON library writes it)."""
    return request(url, json.dumps(payload).encode(), "application/json", timeout)
