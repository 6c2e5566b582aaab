"""Load on the HTTP service: N concurrent clients against ``serve`` on 127.0.0.1.

    python bench/serve_load.py [--checkpoint runs/en-fr/<run>/checkpoints/best.pt]
        [--clients 1 8 32 128] [--duration 10] [--beam 5] [--output FILE]
        [--server-args "--batch-wait-ms 20"]

Starts ``python -m machine_translation.serve`` in its own process on a free port,
then for each client count runs that many clients (threads, each on a keep-alive
connection) for ``--duration`` seconds: each sends one sentence of Multi30K
test_2016_flickr at a time (the sentences in turn, shared by all clients) and
sends the next as soon as the answer arrives. A client stops sending at the end of
the duration and waits for its last answer. Reported per level: requests/s and
sentences/s (the same: one sentence per request), latency p50/p95/p99, errors
(a status other than 200), lost requests (sent, no answer), answers that differ
from the offline translation of the same sentence, and the mean batch the server
decoded (sentences per batch, from its ``/health`` counters).

The baseline is offline translation in this process, while the server is not
running: the same sentences through ``Translator`` (``translate``'s path) at batch
64 with the same beam, timed once before the load and once after it (the machine
may be shared: their mean is the baseline, and both are reported); the ratio is
the service's sentences/s over it. Both decode on the main thread (``serve`` does
since 2026-12-03: on a worker thread it decoded 0.68-0.78x as fast here, see
bench/README.md). The clients use the first ``--sentences`` of the
test set, the ones the baseline translates. They run on the same machine as the
server and take CPU from it.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.translator import Translator


@dataclass
class Level:
    """What the clients of one level saw."""

    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0
    different: int = 0
    batches: int = 0  # the server's batches during the level
    batched_sentences: int = 0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "machine_translation.serve"]
    command += ["--checkpoint", args.checkpoint, "--port", str(port)]
    command += ["--beam", str(args.beam), "--log-level", "warning"]
    command += ["--max-texts", "1000", *shlex.split(args.server_args)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the server did not start; see its log")


def server_totals(port: int) -> tuple[int, int]:
    """The batches and sentences the server has decoded since it started."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/health")
    health = json.loads(connection.getresponse().read())
    connection.close()
    return health["batches"], health["sentences"]


def run_level(
    port: int, clients: int, duration: float, sentences: list[str], offline: dict
) -> Level:
    level, lock = Level(clients), threading.Lock()
    batches_before, sentences_before = server_totals(port)
    turns = itertools.count()
    stop_at = time.monotonic() + duration

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            sentence = sentences[next(turns) % len(sentences)]
            body = json.dumps({"q": sentence, "source": "en", "target": "fr"})
            started = time.monotonic()
            try:
                connection.request(
                    "POST", "/translate", body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                with lock:
                    level.lost += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            elapsed = time.monotonic() - started
            with lock:
                if response.status != 200:
                    level.errors += 1
                    continue
                level.latencies.append(elapsed)
                level.different += answer["translatedText"] != offline[sentence]
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds = time.monotonic() - began  # until the last answer came
    batches_after, sentences_after = server_totals(port)
    level.batches = batches_after - batches_before
    level.batched_sentences = sentences_after - sentences_before
    return level


def offline_translation(
    translator: Translator, sentences: list[str]
) -> tuple[dict[str, str], float]:
    """Each sentence's translation, and the sentences/s it took (batch 64)."""
    started = time.perf_counter()
    found = translator.translate(sentences)
    rate = len(sentences) / (time.perf_counter() - started)
    return {s: f[0].text for s, f in zip(sentences, found, strict=True)}, rate


def table(levels: list[Level], offline_rate: float) -> list[str]:
    rows = [
        "| clients | requests/s | sentences/s | p50 ms | p95 ms | p99 ms | answered "
        "| errors | lost | differ from offline | sentences per batch | of offline |",
        "|" + " ---: |" * 12,
    ]
    for level in levels:
        rate = len(level.latencies) / level.seconds
        rows.append(
            f"| {level.clients} | {rate:.1f} | {rate:.1f} "
            f"| {level.percentile(0.5):.0f} | {level.percentile(0.95):.0f} "
            f"| {level.percentile(0.99):.0f} | {len(level.latencies)} "
            f"| {level.errors} | {level.lost} | {level.different} "
            f"| {level.batched_sentences / max(level.batches, 1):.1f} "
            f"| {rate / offline_rate:.0%} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="default: best.pt of the latest en-fr run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--duration", type=float, default=10.0, help="s per level")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=512, help="of the test set")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument(
        "--server-args", default="", help='more options of serve, "--batch-wait-ms 20"'
    )
    args = parser.parse_args()
    args.checkpoint = str(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    sentences = builtin_test_set("multi30k").sources[: args.sentences]
    lines = [
        f"python bench/serve_load.py {' '.join(sys.argv[1:])}",
        f"date: {datetime.date.today()}, checkpoint: {args.checkpoint}",
        f"beam {args.beam}, the first {len(sentences)} sentences of "
        f"test_2016_flickr, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}",
    ]
    print("\n".join(lines), flush=True)
    translator = Translator(
        args.checkpoint, "cpu", decoding=DecodingConfig(beam_size=args.beam)
    )
    translator.translate(sentences[:64])  # warm-up
    offline, before = offline_translation(translator, sentences)
    print(f"offline before: {before:.1f} sentences/s", flush=True)
    port, levels = free_port(), []
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        server = start_server(args, port, log)
        try:
            run_level(port, 4, 2.0, sentences, offline)  # warm-up
            for clients in args.clients:
                levels.append(
                    run_level(port, clients, args.duration, sentences, offline)
                )
                print(table(levels, before)[-1], flush=True)
        finally:
            server.terminate()
            server.wait(timeout=120)
            log.seek(0)
            errors = [line for line in log if "Error" in line or "Traceback" in line]
    _, after = offline_translation(translator, sentences)
    lines.append(
        f"offline Translator at batch 64: {before:.1f} sentences/s before the "
        f"load, {after:.1f} after; the ratios use their mean"
    )
    lines += table(levels, (before + after) / 2)
    lines.append(f"load average at end {os.getloadavg()[0]:.1f}")
    if errors:
        lines.append(f"server log: {len(errors)} error lines, first: {errors[0]}")
    print("\n".join(lines[3:]))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
