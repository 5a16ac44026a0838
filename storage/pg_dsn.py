"""PostgreSQL connection strings as secrets: their password found, and text scrubbed of it.

Stdlib only, so that settings can check and redact a DSN without the optional driver. Both
forms libpq takes are understood (https://www.postgresql.org/docs/current/libpq-connect.html,
"Connection Strings"): the URI `postgresql://user:password@host:port/db?password=...` and the
keyword form `host=... password='...'`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

MASK = "***"

URI_SCHEMES = ("postgresql://", "postgres://")
# The userinfo's password part of a URI: `scheme://user:PASSWORD@`.
_URI_PASSWORD = re.compile(r"(?P<head>\w+://[^:/?#@\s]*:)(?P<password>[^@/?#\s]*)(?=@)")
# `password=value` in the keyword form or a URI's query: the value bare, or quoted with
# backslash escapes.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'?|[^\s&']+)", re.IGNORECASE
)


def is_uri(dsn: str) -> bool:
    return dsn.strip().lower().startswith(URI_SCHEMES)


def passwords(dsn: str) -> list[str]:
    """Every password written in `dsn`, as written and decoded (percent-escapes, quotes): what a
    message could echo. Empty when it holds none (the password then comes from PGPASSWORD or
    a .pgpass file, which libpq reads and never echoes)."""
    found: list[str] = []
    for match in _URI_PASSWORD.finditer(dsn):
        found += [match["password"], unquote(match["password"])]
    for match in _KEYWORD_PASSWORD.finditer(dsn):
        raw = match["password"]
        found.append(raw)
        if raw.startswith("'"):
            found.append(re.sub(r"\\(.)", r"\1", raw.strip("'")))
    if is_uri(dsn):
        query = urlsplit(dsn.strip()).query
        found += parse_qs(query).get("password", [])
    return sorted({p for p in found if p}, key=len, reverse=True)


def redact(text: str, dsn: str) -> str:
    """`text` with every password of `dsn` replaced by `***`, wherever it occurs (a driver's
    error may quote the whole connection string), and any other URI's or keyword password
    masked as well."""
    for secret in passwords(dsn):
        text = text.replace(secret, MASK)
    text = _URI_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def error_line(exc: BaseException, dsn: str) -> str:
    """The first line of a driver's error (the rest is DETAIL and HINT), with `dsn`'s
    password masked (see `redact`)."""
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__, dsn)


def describe(dsn: str) -> str:
    """The DSN as it may be logged and shown: its password masked. For `postgresql://u:p@h/db`,
    `postgresql://u:***@h/db`."""
    return redact(dsn.strip(), dsn)
