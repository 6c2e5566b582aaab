"""Dynamic batching on a real server: concurrent requests are decoded together, give
what ``translate`` gives, and a shutdown finishes the requests in flight."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import PROJECT_ROOT
from serve_helpers import (
    BEAM,
    DECODING,
    free_port,
    post_json,
    request,
    running_server,
)

from machine_translation.inference.translator import Translator
from machine_translation.serving.settings import ServeSettings

SENTENCES = [
    "A dog runs on the beach.",
    "Two men are sitting on a bench.",
    "A little girl in a pink dress smiles.",
    "A man rides a bicycle down the street.",
    "People walk in the park.",
    "A woman is reading a book.",
    "The children play football on the grass.",
    "A black dog jumps over a fence.",
    "Hello.",
    "I am very tired.",
    "Where is the train station?",
    "A group of people stand in front of a building.",
]


def translate_concurrently(url: str, sentences: list[str]) -> list[str]:
    def one(sentence: str) -> str:
        status, answer = post_json(
            f"{url}/translate", {"q": sentence, "source": "en", "target": "fr"}
        )
        assert status == 200, answer
        return answer["translatedText"]

    with ThreadPoolExecutor(len(sentences)) as pool:
        return list(pool.map(one, sentences))


def test_concurrent_requests_are_batched_and_match_translate(
    serve_translator, serve_checkpoint
):
    sentences = SENTENCES * 2  # 24 clients at once
    settings = ServeSettings(batch_wait_ms=50)
    with running_server(serve_translator, settings) as (url, service):
        served = translate_concurrently(url, sentences)
        batches = list(service.batcher.batches)
        health = request(f"{url}/health")[1]
    assert health["requests"] == health["sentences"] == len(sentences)
    assert health["batches"] == len(batches)
    assert max(requests for requests, _, _ in batches) > 1  # gathered together
    assert sum(sentences for _, sentences, _ in batches) == len(sentences)
    # The library's Translator alone, one translation per sentence, as translate has.
    alone = Translator(serve_checkpoint, "cpu", "fp32", DECODING)
    assert served == [found[0].text for found in alone.translate(sentences)]
    # The translate command line, in its own process.
    settings = ["--checkpoint", str(serve_checkpoint), "--beam", str(BEAM)]
    settings += ["--device", "cpu", "--precision", "fp32"]
    command = subprocess.run(
        [sys.executable, "-m", "machine_translation.translate", *settings, *SENTENCES],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert command.returncode == 0, command.stderr
    assert served[: len(SENTENCES)] == command.stdout.splitlines()


def test_a_batch_holds_at_most_max_batch_tokens_of_several_requests(serve_translator):
    settings = ServeSettings(batch_wait_ms=50, max_batch_tokens=40)
    with running_server(serve_translator, settings) as (url, service):
        translate_concurrently(url, SENTENCES)
        batches = list(service.batcher.batches)
    assert len(batches) > 1
    for requests, _, tokens in batches:
        assert requests == 1 or tokens <= 40


def test_shutdown_finishes_the_requests_in_flight(serve_checkpoint, tmp_path):
    """SIGTERM (as Ctrl+C) while requests decode: each gets its translation, then
    the server exits by itself."""
    port = free_port()
    options = [
        "--checkpoint",
        str(serve_checkpoint),
        "--port",
        str(port),
        "--beam",
        "4",
    ]
    options += ["--device", "cpu", "--batch-wait-ms", "0", "--max-batch-tokens", "50"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "machine_translation.serve", *options],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if request(f"{url}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.close()
                    pytest.fail(f"no server: {(tmp_path / 'serve.log').read_text()}")
                time.sleep(0.2)
        texts = SENTENCES * 5  # a request of 60 texts, six times over
        # One request alone tells how long this machine takes for one; the batcher
        # decodes the six in turn, so one request's time in, five are still pending.
        body = {"q": texts, "source": "en", "target": "fr"}
        started = time.monotonic()
        assert post_json(f"{url}/translate", body, 120)[0] == 200
        one_request = time.monotonic() - started
        with ThreadPoolExecutor(6) as pool:
            pending = [
                pool.submit(post_json, f"{url}/translate", body, 120) for _ in range(6)
            ]
            time.sleep(max(0.2, one_request))  # all six are sent, one at most done
            assert not all(future.done() for future in pending), "too fast to test"
            server.send_signal(signal.SIGTERM)
            answers = [future.result() for future in pending]
        # uvicorn ends by the signal it caught (-15), once everything is done.
        assert server.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()
    for status, answer in answers:
        assert status == 200 and len(answer["translatedText"]) == len(texts)
    assert answers[0] == answers[-1]
    said = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in said  # the batcher closed after them


def test_a_port_in_use_ends_the_process_with_exit_code_1(serve_checkpoint):
    """The model decodes on the main thread while HTTP runs on another: when HTTP
    cannot start, the decoding must end too, not wait forever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        options = ["--checkpoint", str(serve_checkpoint), "--device", "cpu"]
        options += ["--port", str(taken.getsockname()[1])]
        result = subprocess.run(
            [sys.executable, "-m", "machine_translation.serve", *options],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr


def test_a_missing_checkpoint_is_one_line_and_exit_code_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "machine_translation.serve",
            "--checkpoint",
            str(tmp_path / "missing.pt"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")


@pytest.mark.parametrize(
    "setting",
    [{"batch_wait_ms": -1}, {"max_batch_tokens": 0}, {"max_texts": 0}],
)
def test_impossible_batching_settings_are_named(setting):
    (name,) = setting
    with pytest.raises(ValueError, match=name):
        ServeSettings(**setting)
