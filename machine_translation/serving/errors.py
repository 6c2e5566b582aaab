"""Every failure as LibreTranslate answers it: a status and ``{"error": "..."}``.

Routes raise :class:`ApiError`; :func:`install_error_handlers` turns it, FastAPI's
own errors (unknown route, wrong method) and any unexpected exception into that
JSON, so that no request can end the server or get an HTML page back.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from machine_translation.serving.batching import BatcherClosed

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the service refuses: ``status`` (4xx) and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Makes every error of ``app`` a JSON ``{"error": ...}`` response."""

    @app.exception_handler(ApiError)
    async def refused(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(BatcherClosed)
    async def closing(_: Request, error: BatcherClosed) -> JSONResponse:
        return error_response(503, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, f"Invalid request: {error.errors()}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"Cannot translate: {type(error).__name__}")
