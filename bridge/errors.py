"""The one error type every HTTP error body comes from: `{"error": ..., "errcode": ...}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ApiError(Exception):
    status = 400
    # The request's body was left unread and cannot be read: close the connection after the
    # answer rather than wait for the rest of it.
    closes_connection = False

    def __init__(self, errcode: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.message = message
        if status is not None:
            self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.message, "errcode": self.errcode}


class BadRequest(ApiError):
    status = 400


class Unauthenticated(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class UnreadableBody(BadRequest):
    closes_connection = True


class RequestTimeout(ApiError):
    status = 408
    closes_connection = True


class TooLarge(ApiError):
    status = 413


class UnsupportedEncoding(ApiError):
    status = 415


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


class Unavailable(ApiError):
    status = 503


def error_path(data: Any, loc: Sequence[int | str]) -> list[str]:
    """A validation error's location as the sender wrote it.

    Pydantic puts the name of a union's member into the location (`literal['*']`,
    `dict[str,any]`, a model's tag); the sender's document has no such level, so a part that
    is not a key or index of the data at that point is left out, unless it is the last part
    and its parent an object: then it names a missing key.
    """
    path: list[str] = []
    node = data
    for index, part in enumerate(loc):
        found, child = _child(node, part)
        missing_key = (
            isinstance(node, dict)
            and index == len(loc) - 1
            and isinstance(part, str)
            and part.isidentifier()
        )
        if not found and not missing_key:
            continue
        node = child
        path.append(str(part))
    return path


def _child(node: Any, part: int | str) -> tuple[bool, Any]:
    if isinstance(node, dict) and part in node:
        return True, node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None
