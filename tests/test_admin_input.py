"""Admin API inputs that once answered 500: numbers str.isdigit() takes but int() or SQLite
refuse (found by the OpenAPI fuzz run, tests/test_openapi.py)."""

from __future__ import annotations

import pytest

from tests.conftest import World


@pytest.mark.parametrize(
    "path",
    [
        "/admin/sessions?limit=%C2%B2",  # "²": a digit to str.isdigit(), not to int()
        "/admin/outbox?limit=%C2%B2",
        "/admin/events?limit=%D9%A1",  # Arabic-Indic one: int() would take it, ASCII only here
        "/admin/sessions?limit=" + "9" * 5000,  # over int()'s 4300-digit limit
        "/admin/sessions?limit=0001000",
    ],
)
async def test_limit_is_ascii_digits_from_1_to_1000(running: World, path: str) -> None:
    assert running.bridge is not None
    headers = running.bridge.admin_headers()
    async with running.http.get(running.bridge.url + path, headers=headers) as r:
        body = await r.json()
    if path.endswith("=0001000"):
        assert r.status == 200, body
    else:
        assert (r.status, body["errcode"]) == (400, "invalid_query")


@pytest.mark.parametrize(
    ("session_id", "errcode"),
    [
        ("9223372036854775807", "unknown_session"),  # SQLite's largest integer
        ("9223372036854775808", "unknown_session"),  # one more: SQLite cannot bind it
        ("9" * 5000, "unknown_session"),
        ("%D9%A1", "not_found"),  # a non-ASCII digit is no session id
    ],
)
async def test_session_ids_out_of_range_are_unknown(
    running: World, session_id: str, errcode: str
) -> None:
    assert running.bridge is not None
    url = f"{running.bridge.url}/admin/sessions/{session_id}"
    async with running.http.get(url, headers=running.bridge.admin_headers()) as r:
        body = await r.json()
    assert (r.status, body["errcode"]) == (404, errcode)
