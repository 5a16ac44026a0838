"""The one error type every HTTP error body comes from: `{"error": ..., "errcode": ...}`."""

from __future__ import annotations


class ApiError(Exception):
    status = 400

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


class TooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    status = 503
