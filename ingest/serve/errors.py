"""The one error type of ``approxft serve``: a request it will not answer, with an HTTP status and
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class RequestError(Exception):
    """A bad request: answered with ``status`` and an OpenAI-style error body naming ``param``."""

    def __init__(self, status: HTTPStatus, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> RequestError:
    """A 400 naming ``param``."""
    return RequestError(HTTPStatus.BAD_REQUEST, message, param=param)
