"""The one error type every HTTP error body comes from: `{"error": ..., "errcode": ...}`."""

from __future__ import annotations

from bridge.core.errors import InvalidInput


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


def answer_for(exc: InvalidInput) -> BadRequest:
    """The HTTP answer to input the bridge cannot take: a 400 with its errcode and message."""
    return BadRequest(exc.errcode, exc.message)
