"""``python -m machine_translation.serve``: the model as an HTTP service and a page.

    python -m machine_translation.serve                       # http://127.0.0.1:5000
    python -m machine_translation.serve --checkpoint path/to/best.pt
    python -m machine_translation.serve --port 8000 --beam 4 --api-key SECRET

It speaks LibreTranslate's API (``POST /translate``, ``GET /languages``), so its
clients work unchanged; ``/`` is a page that translates as you type and shows the
n-best translations and the cross-attention alignment; ``/docs`` the OpenAPI page.
It uses ``best.pt`` of the most recent ``en-fr`` run unless ``--checkpoint`` names
one (``--adapter`` adds LoRA adapters, as in ``translate``). Requests arriving
together are decoded in one batch (``--batch-wait-ms``, ``--max-batch-tokens``);
each line gets the translation ``translate`` gives it with the same settings.
Ctrl+C or SIGTERM stops taking connections, finishes the requests in flight and
exits. A missing or unreadable checkpoint is one line on standard error and exit
code 2. ``--api-key`` (or the environment variable ``SERVE_API_KEY``) makes every
request carry ``api_key``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from machine_translation.checkpoints.files import CheckpointError
from machine_translation.checkpoints.runs import add_run_arguments, checkpoint_argument
from machine_translation.config.compose import load_decoding_config
from machine_translation.inference.translator import Translator
from machine_translation.serving.settings import ServeSettings

DEFAULTS = ServeSettings()
LIMITS = [  # option, type, meaning; each a field of ServeSettings
    ("--max-characters", int, "characters per text"),
    ("--max-texts", int, "texts per request"),
    ("--max-body-bytes", int, "request body size"),
    ("--batch-wait-ms", float, "how long a batch waits for more requests"),
    ("--max-batch-tokens", int, "source tokens per batch"),
]


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.serve",
        description="Serve English → French translation over HTTP.",
    )
    parser.add_argument("--checkpoint", help="a .pt file (default: latest run's best)")
    parser.add_argument("--adapter", help="LoRA adapters to merge into --checkpoint")
    add_run_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="(default: 5000)")
    parser.add_argument("--beam", type=int, help="beam size; 1 = greedy (default: 5)")
    parser.add_argument("--alpha", type=float, help="length penalty (default: 1.0)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SERVE_API_KEY"),
        help="require this api_key in every request (default: $SERVE_API_KEY)",
    )
    limits = parser.add_argument_group("limits")
    for flag, kind, meaning in LIMITS:
        limits.add_argument(
            flag,
            type=kind,
            default=getattr(DEFAULTS, _field(flag)),
            help=f"{meaning} (default: %(default)s)",
        )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32")
    parser.add_argument("--log-level", default="info", help="uvicorn's (info)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    try:
        limits = {_field(flag): getattr(args, _field(flag)) for flag, _, _ in LIMITS}
        settings = ServeSettings(**limits, api_key=args.api_key)
        decoding = load_decoding_config(beam_size=args.beam, length_penalty=args.alpha)
        translator = Translator(
            checkpoint_argument(args),
            args.device,
            args.precision,
            decoding,
            nbest=decoding.beam_size,  # every alternative a request may ask for
            adapter=args.adapter if args.checkpoint else None,
        )
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn  # (after the checks: a bad argument answers at once)

    from machine_translation.serving.app import create_app
    from machine_translation.serving.service import TranslationService

    service = TranslationService(translator, settings)
    app = create_app(service, settings, worker_thread=False)
    config = uvicorn.Config(app, args.host, args.port, log_level=args.log_level)
    server = uvicorn.Server(config)

    def serve_http() -> None:
        try:
            server.run()
        finally:  # (also when it could not start: the decoding below then ends)
            service.close()

    # HTTP on a thread, the model on the main thread, where it decodes fastest on
    # a CPU (DynamicBatcher.work). Ctrl+C or SIGTERM: uvicorn stops taking
    # connections and waits for the requests in flight (the main thread decodes
    # them), then the app's lifespan closes the batcher and work() returns.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, server.handle_exit)
    http = threading.Thread(target=serve_http, name="http")
    http.start()
    print(
        f"serving on http://{args.host}:{args.port} (the page at /, the API at "
        "/docs); Ctrl+C stops",
        file=sys.stderr,
    )
    service.work()
    http.join()
    translator.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
