"""The LibreTranslate API of a real server on 127.0.0.1: shapes, forms, errors."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from urllib.parse import urlparse

import pytest
from serve_helpers import BEAM, LIMITS, post_json, request, running_server

from machine_translation.serving.settings import ServeSettings

EN_FR = {"source": "en", "target": "fr"}


def best(serve_translator, *sentences):
    return [found[0].text for found in serve_translator.translate(list(sentences))]


def test_a_string_gets_a_string_as_libretranslate_answers(serve_url, serve_translator):
    status, answer = post_json(f"{serve_url}/translate", {"q": "A dog runs.", **EN_FR})
    assert status == 200
    assert answer == {"translatedText": best(serve_translator, "A dog runs.")[0]}


def test_a_list_gets_lists_with_alternatives_and_detected_language(
    serve_url, serve_translator
):
    texts = ["A man sits.", "Two dogs play in the snow.", "A girl smiles."]
    status, answer = post_json(
        f"{serve_url}/translate",
        {"q": texts, "source": "auto", "target": "fr", "alternatives": 2},
    )
    assert status == 200
    assert answer["translatedText"] == best(serve_translator, *texts)
    assert [len(others) <= 2 for others in answer["alternatives"]] == [True] * 3
    for text, others in zip(
        answer["translatedText"], answer["alternatives"], strict=True
    ):
        assert text not in others and all(isinstance(o, str) for o in others)
    assert answer["detectedLanguage"] == [{"confidence": 0.0, "language": "en"}] * 3


def test_alternatives_of_a_string_are_the_beams_other_candidates(
    serve_url, serve_translator
):
    status, answer = post_json(
        f"{serve_url}/translate",
        {"q": "A dog runs.", "source": "auto", "target": "fr", "alternatives": 3},
    )
    assert status == 200
    candidates = [t.text for t in serve_translator.translate(["A dog runs."])[0]]
    assert answer["translatedText"] == candidates[0]
    assert answer["alternatives"] == [c for c in candidates[1:] if c != candidates[0]]
    assert answer["detectedLanguage"] == {"confidence": 0.0, "language": "en"}


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_form_data_as_curl_sends_it(serve_url, serve_translator, encoding):
    fields = {"q": "A woman reads a book.", **EN_FR, "alternatives": "1"}
    if encoding == "urlencoded":  # curl -d q=...&source=en&target=fr
        body = urllib.parse.urlencode(fields).encode()
        kind = "application/x-www-form-urlencoded"
    else:  # curl -F q=... -F source=en ...
        parts = [
            f'--XyZ\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        body = ("".join(parts) + "--XyZ--\r\n").encode()
        kind = "multipart/form-data; boundary=XyZ"
    status, answer = request(f"{serve_url}/translate", body, kind)
    assert status == 200
    assert (
        answer["translatedText"] == best(serve_translator, "A woman reads a book.")[0]
    )
    assert len(answer["alternatives"]) <= 1


def test_lines_are_translated_one_by_one(serve_url, serve_translator):
    status, answer = post_json(
        f"{serve_url}/translate", {"q": "A dog runs.\n\nA man sits.\r\n", **EN_FR}
    )
    assert status == 200
    first, second = best(serve_translator, "A dog runs.", "A man sits.")
    assert answer["translatedText"] == f"{first}\n\n{second}\n"


def test_languages_health_docs_and_page(serve_url):
    assert request(f"{serve_url}/languages") == (
        200,
        [
            {"code": "en", "name": "English", "targets": ["fr"]},
            {"code": "fr", "name": "French", "targets": []},
        ],
    )
    status, health = request(f"{serve_url}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["batches"] <= health["requests"] <= health["sentences"]
    status, spec = request(f"{serve_url}/openapi.json")
    assert status == 200 and {"/translate", "/explain", "/languages"} <= set(
        spec["paths"]
    )
    for path, kind in [("/docs", "text/html"), ("/", "text/html")]:
        connection = http.client.HTTPConnection(urlparse(serve_url).netloc, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type").startswith(kind)
        connection.close()


def test_explain_gives_nbest_tokens_and_attention_per_layer(
    serve_url, serve_translator
):
    status, answer = post_json(f"{serve_url}/explain", {"q": "Two dogs play."})
    assert status == 200
    candidates = serve_translator.translate(["Two dogs play."])[0]
    assert answer["translations"] == [
        {"text": t.text, "score": pytest.approx(t.score)} for t in candidates
    ]
    assert answer["translatedText"] == candidates[0].text
    scores = [t["score"] for t in answer["translations"]]
    assert scores == sorted(scores, reverse=True) and len(scores) <= BEAM
    layers = serve_translator.model.config.decoder_layers
    rows, columns = len(answer["targetTokens"]), len(answer["sourceTokens"])
    assert len(answer["attention"]) == layers and answer["targetTokens"][-1] == "</s>"
    for layer in answer["attention"]:
        assert len(layer) == rows and all(len(row) == columns for row in layer)
        assert all(sum(row) == pytest.approx(1, abs=1e-3) for row in layer)


ERRORS = {
    "missing q": ({**EN_FR}, 400, "missing q"),
    "empty q": ({"q": "", **EN_FR}, 400, "missing q"),
    "empty list": ({"q": [], **EN_FR}, 400, "missing q"),
    "list with a number": ({"q": ["A dog.", 3], **EN_FR}, 400, "q[1] must be"),
    "list with null": ({"q": ["A dog.", None], **EN_FR}, 400, "not null"),
    "q an object": ({"q": {"a": 1}, **EN_FR}, 400, "not dict"),
    "missing source": ({"q": "A dog.", "target": "fr"}, 400, "missing source"),
    "source de": ({"q": "A dog.", "source": "de", "target": "fr"}, 400, "de is not"),
    "target es": ({"q": "A dog.", "source": "en", "target": "es"}, 400, "es is not"),
    "html": ({"q": "<b>A dog.</b>", **EN_FR, "format": "html"}, 400, "html format"),
    "alternatives word": ({"q": "A", **EN_FR, "alternatives": "x"}, 400, "number"),
    "alternatives bool": ({"q": "A", **EN_FR, "alternatives": True}, 400, "number"),
    "too many alternatives": (
        {"q": "A dog.", **EN_FR, "alternatives": BEAM},
        400,
        f"must be <= {BEAM - 1}",
    ),
    "lone surrogate": ({"q": "A dog \ud800.", **EN_FR}, 400, "lone surrogate"),
    "lone low surrogate in a list": (
        {"q": ["ok", "\udc00"], **EN_FR},
        400,
        "q[1] holds a lone surrogate",
    ),
    "text over the limit": (
        {"q": "a" * (LIMITS.max_characters + 1), **EN_FR},
        400,
        "exceeds text limit",
    ),
    "too many texts": (
        {"q": ["A dog."] * (LIMITS.max_texts + 1), **EN_FR},
        400,
        "exceeds text limit",
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_bad_json_fields_get_a_json_error(serve_url, case):
    payload, expected_status, fragment = ERRORS[case]
    status, answer = post_json(f"{serve_url}/translate", payload)
    assert status == expected_status
    assert fragment in answer["error"]


RAW_ERRORS = {
    "invalid JSON": (b'{"q": "A dog', "application/json", 400, "Invalid JSON"),
    "a JSON list": (b'["A dog."]', "application/json", 400, "expected an object"),
    "not UTF-8": (b'{"q": "\xff\xfe"}', "application/json", 400, "not UTF-8"),
    "plain text": (b"A dog.", "text/plain", 415, "Send JSON"),
    "body over the limit": (
        json.dumps({"q": "a" * LIMITS.max_body_bytes, **EN_FR}).encode(),
        "application/json",
        413,
        "too large",
    ),
    "form text over the limit": (
        urllib.parse.urlencode({"q": "b" * 401, **EN_FR}).encode(),
        "application/x-www-form-urlencoded",
        400,
        "exceeds text limit",
    ),
}


@pytest.mark.parametrize("case", RAW_ERRORS)
def test_bad_bodies_get_a_json_error(serve_url, case):
    body, kind, expected_status, fragment = RAW_ERRORS[case]
    status, answer = request(f"{serve_url}/translate", body, kind)
    assert status == expected_status
    assert fragment in answer["error"]


def test_a_chunked_body_over_the_limit_gets_413(serve_url):
    """No Content-Length to refuse on: the limit is counted as the body arrives."""
    # It passes the limit with its last chunk only: the client has sent everything
    # by the time the server refuses (and closes the connection).
    limit = LIMITS.max_body_bytes
    head = b'{"q": "' + b"a" * (limit - 7)  # exactly the limit
    chunks = [head[i : i + 1000] for i in range(0, limit, 1000)] + [b'a"}']
    assert sum(map(len, chunks[:-1])) <= limit < sum(map(len, chunks))
    connection = http.client.HTTPConnection(urlparse(serve_url).netloc, timeout=10)
    connection.request(
        "POST",
        "/translate",
        body=iter(chunks),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 413
    assert "too large" in json.loads(response.read())["error"]
    connection.close()


def test_unknown_routes_and_methods_get_json_errors(serve_url):
    assert request(f"{serve_url}/nowhere")[0] == 404
    status, answer = request(f"{serve_url}/translate")  # GET
    assert status == 405 and "error" in answer
    status, answer = post_json(f"{serve_url}/explain", {"q": "A dog.\nA cat."})
    assert status == 400 and "one non-empty line" in answer["error"]


ODD_TEXT = {
    "control characters": "Control \x07 bell \x0b vtab \x0c formfeed \x00 nul.",
    "right to left": "Right to left: שלום עולם مرحبا بالعالم.",
    "emoji": "A dog 🐶 rides a bike 🚲.",
    "emoji as a surrogate pair": "\U0001f600 smile",
    "zero width and combining": "Zero\u200bwidth and combining e\u0301.",
    "only spaces": "   ",
}


@pytest.mark.parametrize("case", ODD_TEXT)
def test_odd_unicode_text_is_translated_without_harm(serve_url, serve_translator, case):
    text = ODD_TEXT[case]
    status, answer = post_json(f"{serve_url}/translate", {"q": text, **EN_FR})
    assert status == 200
    assert answer["translatedText"] == "\n".join(
        found[0].text for found in serve_translator.translate(text.split("\n"))
    )
    assert request(f"{serve_url}/health")[1]["status"] == "ok"


def test_an_api_key_is_required_when_configured(serve_translator):
    settings = ServeSettings(api_key="s3cret")
    with running_server(serve_translator, settings) as (url, _):
        request_fields = {"q": "A dog.", **EN_FR}
        for key, status in [(None, 403), ("wrong", 403), ("", 403), (7, 403)]:
            fields = (
                request_fields if key is None else {**request_fields, "api_key": key}
            )
            answer_status, answer = post_json(f"{url}/translate", fields)
            assert answer_status == status and "API key" in answer["error"]
        status, _ = post_json(
            f"{url}/translate", {**request_fields, "api_key": "s3cret"}
        )
        assert status == 200
        form = urllib.parse.urlencode({**request_fields, "api_key": "s3cret"}).encode()
        assert (
            request(f"{url}/translate", form, "application/x-www-form-urlencoded")[0]
            == 200
        )
        assert post_json(f"{url}/explain", {"q": "A dog."})[0] == 403
        assert (
            post_json(f"{url}/explain", {"q": "A dog.", "api_key": "s3cret"})[0] == 200
        )
