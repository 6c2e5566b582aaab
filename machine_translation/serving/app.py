"""The FastAPI application: LibreTranslate's routes, the page, and its explanation.

- ``POST /translate``: LibreTranslate's request and response
  (:mod:`~machine_translation.serving.libretranslate`).
- ``GET /languages``, ``GET /health``.
- ``POST /explain``: one sentence's n-best translations with scores, its subwords
  and the cross-attention alignment per layer (for the page).
- ``GET /``: the page (``static/``, no outside resources); ``/docs``: OpenAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from machine_translation.serving.body_limit import BodySizeLimit
from machine_translation.serving.errors import ApiError, install_error_handlers
from machine_translation.serving.libretranslate import (
    LANGUAGES,
    check_api_key,
    check_text,
    parse_translate,
    read_fields,
    translate_response,
)
from machine_translation.serving.service import TranslationService
from machine_translation.serving.settings import ServeSettings

STATIC = Path(__file__).parent / "static"
_TEXT = {"type": "string"}
_TRANSLATE_BODY = {
    "type": "object",
    "required": ["q", "source", "target"],
    "properties": {
        "q": {"oneOf": [_TEXT, {"type": "array", "items": _TEXT}]},
        "source": {"type": "string", "enum": ["en", "auto"]},
        "target": {"type": "string", "enum": ["fr"]},
        "format": {"type": "string", "enum": ["text"]},
        "alternatives": {"type": "integer", "minimum": 0},
        "api_key": _TEXT,
    },
}
_EXPLAIN_BODY = {
    "type": "object",
    "required": ["q"],
    "properties": {"q": _TEXT, "api_key": _TEXT},
}
_ERRORS = {
    status: {"description": meaning, "content": {"application/json": {}}}
    for status, meaning in [
        (400, 'Invalid request: {"error": "..."}'),
        (403, 'Missing or wrong api_key: {"error": "..."}'),
        (413, 'Body over the size limit: {"error": "..."}'),
    ]
}


def _body(schema: dict[str, Any], forms: bool) -> dict[str, Any]:
    kinds = ["application/json"]
    if forms:
        kinds += ["application/x-www-form-urlencoded", "multipart/form-data"]
    content = {kind: {"schema": schema} for kind in kinds}
    return {"requestBody": {"required": True, "content": content}}


def create_app(
    service: TranslationService, settings: ServeSettings, worker_thread: bool = True
) -> FastAPI:
    """The application; its lifespan starts ``service`` on a worker thread (unless
    ``worker_thread`` is False: the caller runs ``service.work()``) and stops it
    gracefully."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if worker_thread:
            service.start()
        try:
            yield
        finally:
            service.close()  # after the server finished the requests in flight

    app = FastAPI(
        title="English → French translation",
        description="LibreTranslate-compatible API of a transformer-translation model.",
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"]
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post(
        "/translate",
        summary="Translate text (LibreTranslate's API)",
        openapi_extra=_body(_TRANSLATE_BODY, forms=True),
        responses=_ERRORS,
    )
    async def translate(request: Request) -> dict[str, Any]:
        """``q`` a text or a list of texts → ``translatedText`` (and
        ``alternatives``, ``detectedLanguage``), in LibreTranslate's shapes."""
        fields = await read_fields(request)
        check_api_key(fields, settings)
        checked = parse_translate(fields, settings, service.max_alternatives)
        return translate_response(checked, await service.translate(checked.texts))

    @app.post(
        "/explain",
        summary="One sentence's n-best translations and cross-attention alignment",
        openapi_extra=_body(_EXPLAIN_BODY, forms=False),
        responses=_ERRORS,
    )
    async def explain(request: Request) -> dict[str, Any]:
        """``{"q": sentence}`` → the n-best translations with their scores, the
        source and target subwords, and per decoder layer the cross-attention
        averaged over heads: ``attention[layer][target token][source token]``."""
        fields = await read_fields(request)
        check_api_key(fields, settings)
        sentence = fields.get("q")
        check_text(sentence, None, settings.max_characters)
        if not sentence.strip() or "\n" in sentence or "\r" in sentence:
            raise ApiError(400, "Invalid request: q must be one non-empty line")
        found = await service.explain(sentence)
        return {
            "translatedText": found.translations[0].text,
            "translations": [
                {"text": t.text, "score": t.score} for t in found.translations
            ],
            "sourceTokens": found.alignment.source_tokens,
            "targetTokens": found.alignment.target_tokens,
            "attention": found.alignment.weights,
        }

    @app.get("/languages", summary="Languages (LibreTranslate's shape)")
    async def languages() -> list[dict[str, Any]]:
        return LANGUAGES

    @app.get("/health", summary="Whether the service answers, and what it decoded")
    async def health() -> dict[str, Any]:
        """``status`` ok, and the batches, requests and sentences decoded since the
        start (their ratio is the mean batch size)."""
        return {"status": "ok", **asdict(service.batcher.totals)}

    return app
