"""Comparing secrets without leaking them through timing."""

from __future__ import annotations

import hashlib
import hmac


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time equality. Both sides are hashed first so not even the length leaks."""
    if given is None:
        given = ""
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b) and bool(expected)
