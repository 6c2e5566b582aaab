"""LibreTranslate's ``/translate`` request and response, read and written here.

A request is JSON (``Content-Type: application/json``) or form data, with fields
``q`` (a text, or a list of texts in JSON), ``source`` (``en`` or ``auto``),
``target`` (``fr``), ``format`` (``text``), ``alternatives`` (how many other
translations to add) and ``api_key``. A string ``q`` answers
``{"translatedText": "...", "alternatives": [...]}``, a list answers a list in each;
``alternatives`` appears only when asked for, and ``detectedLanguage`` only with
``source=auto``, as LibreTranslate does. This model reads English only, so ``auto``
detects nothing: it reports English with confidence 0.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from machine_translation.serving.errors import ApiError
from machine_translation.serving.settings import ServeSettings

SOURCES, TARGETS = ("en", "auto"), ("fr",)
LANGUAGES = [
    {"code": "en", "name": "English", "targets": ["fr"]},
    {"code": "fr", "name": "French", "targets": []},
]
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TranslateRequest:
    """A checked ``/translate`` request.

    Attributes:
        texts: The texts (one when ``q`` was a string).
        is_list: Whether ``q`` was a list (the response then holds lists).
        alternatives: Other translations wanted per text, besides the best.
        detect: Whether ``source`` was ``auto`` (the response then says what it took).
    """

    texts: list[str]
    is_list: bool
    alternatives: int
    detect: bool


async def read_fields(request: Request) -> dict[str, Any]:
    """The request's fields: its JSON object, or its form data.

    Raises:
        ApiError: 400 for a body that is not UTF-8 or not a JSON object, 415 for a
            body that is neither JSON nor form data.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        try:
            fields = json.loads((await request.body()).decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ApiError(400, f"Invalid JSON format: not UTF-8 ({error})") from None
        except json.JSONDecodeError as error:
            raise ApiError(400, f"Invalid JSON format: {error}") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "Invalid JSON format: expected an object {...}")
        return fields
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return {key: form.get(key) for key in form}
    raise ApiError(
        415,
        "Send JSON (Content-Type: application/json) or form data, "
        f"not {kind or 'a body without a Content-Type'}",
    )


def check_api_key(fields: dict[str, Any], settings: ServeSettings) -> None:
    """Refuses a request without the configured key (when one is configured).

    Raises:
        ApiError: 403 for a missing or wrong ``api_key``.
    """
    if settings.api_key is None:
        return
    given = fields.get("api_key")
    if not given:
        raise ApiError(403, "An API key is required: send api_key")
    if not isinstance(given, str) or not hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), settings.api_key.encode()
    ):
        raise ApiError(403, "Invalid API key")


def parse_translate(
    fields: dict[str, Any], settings: ServeSettings, max_alternatives: int
) -> TranslateRequest:
    """Checks a ``/translate`` request's fields.

    Args:
        fields: From :func:`read_fields`.
        settings: The limits.
        max_alternatives: The most alternatives the search gives (beam size - 1).

    Raises:
        ApiError: 400 naming what is wrong: ``q`` missing, empty, not text, with a
            lone surrogate or over the limits; another language; another format;
            ``alternatives`` not a number or too many.
    """
    q = fields.get("q")
    if q is None or q == "" or q == []:
        raise ApiError(400, "Invalid request: missing q parameter")
    is_list = isinstance(q, list)
    texts = q if is_list else [q]
    if is_list and len(texts) > settings.max_texts:
        raise ApiError(
            400,
            f"Invalid request: request ({len(texts)}) exceeds text limit "
            f"({settings.max_texts} texts)",
        )
    for index, text in enumerate(texts):
        check_text(text, index if is_list else None, settings.max_characters)
    source, target = _language(fields, "source"), _language(fields, "target")
    if source not in SOURCES:
        raise ApiError(400, f"{source} is not supported: this model translates en")
    if target not in TARGETS:
        raise ApiError(400, f"{target} is not supported: this model translates to fr")
    text_format = fields.get("format") or "text"
    if text_format != "text":
        raise ApiError(
            400, f"{text_format} format is not supported: send plain text (text)"
        )
    return TranslateRequest(
        list(texts), is_list, _alternatives(fields, max_alternatives), source == "auto"
    )


def check_text(text: object, index: int | None, max_characters: int) -> None:
    """Refuses a ``q`` that is not text the model can read.

    Control characters, right-to-left scripts and emoji are text (the model
    translates what it can); a lone surrogate (JSON ``"\\ud800"``) is not Unicode.

    Raises:
        ApiError: 400 naming the text (``index`` in a list) and the problem.
    """
    where = "q" if index is None else f"q[{index}]"
    if isinstance(text, UploadFile):
        raise ApiError(400, f"Invalid request: {where} must be text, not a file")
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        raise ApiError(
            400,
            f"Invalid request: {where} must be a string or a list of strings, "
            f"not {kind}",
        )
    if len(text) > max_characters:
        raise ApiError(
            400,
            f"Invalid request: {where} ({len(text)} characters) exceeds text limit "
            f"({max_characters})",
        )
    surrogate = _SURROGATE.search(text)
    if surrogate:
        raise ApiError(
            400,
            f"Invalid request: {where} holds a lone surrogate "
            f"(U+{ord(surrogate.group()):04X} at character {surrogate.start()}), "
            "which is not Unicode text",
        )


def translate_response(
    request: TranslateRequest, translations: list[list[str]]
) -> dict[str, Any]:
    """The response in LibreTranslate's shape.

    Args:
        request: The checked request.
        translations: Per text, its translations, best first, without repeats.

    >>> one = TranslateRequest(["Hi"], is_list=False, alternatives=1, detect=False)
    >>> translate_response(one, [["Salut", "Bonjour", "Coucou"]])
    {'translatedText': 'Salut', 'alternatives': ['Bonjour']}
    >>> many = TranslateRequest(["Hi", "No"], is_list=True, alternatives=0, detect=True)
    >>> translate_response(many, [["Salut"], ["Non"]])["detectedLanguage"]
    [{'confidence': 0.0, 'language': 'en'}, {'confidence': 0.0, 'language': 'en'}]
    """
    best = [found[0] for found in translations]
    others = [found[1 : 1 + request.alternatives] for found in translations]
    detected = {"confidence": 0.0, "language": "en"}  # assumed, not detected
    response: dict[str, Any] = {"translatedText": best if request.is_list else best[0]}
    if request.detect:
        response["detectedLanguage"] = (
            [dict(detected) for _ in best] if request.is_list else detected
        )
    if request.alternatives > 0:
        response["alternatives"] = others if request.is_list else others[0]
    return response


def _language(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise ApiError(400, f"Invalid request: missing {name} parameter")
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid request: {name} must be a language code")
    return value.strip().lower()


def _alternatives(fields: dict[str, Any], most: int) -> int:
    value = fields.get("alternatives", 0)
    try:
        if isinstance(value, bool) or (
            isinstance(value, float) and not value.is_integer()
        ):
            raise ValueError  # int() would take True as 1 and 2.5 as 2
        count = max(0, int(value or 0))
    except (TypeError, ValueError):
        raise ApiError(
            400, "Invalid request: alternatives parameter is not a number"
        ) from None
    if count > most:
        raise ApiError(
            400, f"Invalid request: alternatives parameter must be <= {most}"
        )
    return count
