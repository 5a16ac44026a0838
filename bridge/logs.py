"""structlog set-up: JSON lines (readable console output on a terminal), secrets redacted.

Every configured secret is replaced wherever it would appear in a log line, tracebacks
included: a safety net behind the rule that secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bridge.settings import LoggingSettings

REDACTED = "[redacted]"


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole; without regard to
        # case, because some reach a line changed in case (a host name is lower-cased).
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(map(re.escape, self._secrets)), re.IGNORECASE)
            if self._secrets
            else None
        )

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            assert self._pattern is not None
            if self._pattern.search(value) is None:
                return value  # as it was: a str subclass (Jinja's Markup) keeps its type
            return type(value)(self._pattern.sub(REDACTED, value))
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def redact(self, value: Any) -> Any:
        """`value` with every secret replaced: strings, and strings inside dicts and lists."""
        return self._clean(value) if self._secrets else value

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        if not self._secrets:
            return event
        return {k: self._clean(v) for k, v in event.items()}


_MALFORMED = frozenset({"HttpProcessingError", "RequestPayloadError"})


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad request line, bad headers, broken
    chunked framing, also in a body it reads and discards after the answer) at error level
    with a traceback, then answers it 400 itself or closes the connection. It is the
    sender's fault, not the bridge's: one line at info, without the traceback, naming the
    kind of fault and the peer but none of the request's bytes (a request line can hold a
    hook token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # aiohttp's HttpProcessingError and RequestPayloadError, named rather than imported:
        # importing either loads aiohttp (about 20 MB) into the delivery process, which logs
        # through here too and makes no use of aiohttp.
        malformed = any(kind.__name__ in _MALFORMED for kind in type(exc).__mro__)
        if record.name == "aiohttp.server" and malformed:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"http.malformed_request: {type(exc).__name__} from {peer}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


_debug = True  # until configure_logging says otherwise, debug lines reach structlog


def debug_enabled() -> bool:
    """Whether the configured level lets debug lines through. The hot paths (a line per
    request, a line per delivery) ask before logging at debug: structlog's lazy logger builds
    a bound logger on every call, written or not, and that was about 3% of the serving
    process's CPU under load (py-spy)."""
    return _debug


def configure_logging(
    settings: LoggingSettings, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    global _debug
    stream = stream or sys.stderr
    as_json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        Redactor(secrets),
    ]
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    _debug = level <= logging.DEBUG
    writer = structlog.WriteLogger(stream)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One writer for every logger: WriteLoggerFactory builds one per log call, since
        # loggers are not cached (tests configure logging again and again in one process).
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: give them the same format and redaction.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.addFilter(MalformedRequests())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
