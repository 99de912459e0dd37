"""Log lines: one redacting handler, text or JSON formatters, and the process-wide secret registry."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6
"""Shorter registered secrets are ignored: replacing every 'abc' would garble the log, not protect it."""

_SENSITIVE_NAMES = (
    r"[\w-]*(?:token|password|passwd|secret|signature)|ticket(?:_id)?|request_id|api[_-]?key"
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[redacted\])[^\s\"',;}\])\\]+")
_PAIR = re.compile(
    r"(?i)(?P<key>(?<![\w-])(?:" + _SENSITIVE_NAMES + r")(?:\\?[\"']\s*:|\s*=)\s*)"
    r"(?:(?P<quote>\\?[\"'])(?P<quoted>.*?)(?P=quote)"
    r"|(?P<bare>(?!\[redacted\])[^\s&,;\"'}\])\\]+))"
)

_lock = threading.Lock()
_secrets: set[str] = set()
_sources: dict[object, Callable[[], str | None]] = {}


def register_secret(value: str | None) -> None:
    """Redact `value` wherever it appears in a log line from now on (logging is process-wide)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def register_secret_source(source: Callable[[], str | None]) -> Callable[[], None]:
    """Redact whatever `source()` returns when a line is logged (a session's current token).

    Returns the function that unregisters it.
    """
    key = object()
    with _lock:
        _sources[key] = source

    def unregister() -> None:
        with _lock:
            _sources.pop(key, None)

    return unregister


def redact(text: str) -> str:
    """`text` without credentials: Bearer/Basic values, token/password/ticket/signature values, secrets."""
    for secret in _current_secrets():
        text = text.replace(secret, REDACTED)
    text = _SCHEME.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    return _PAIR.sub(_redact_pair, text)


def _current_secrets() -> list[str]:
    with _lock:
        found, sources = set(_secrets), list(_sources.values())
    for source in sources:
        value = source()
        if value and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
    return sorted(found, key=len, reverse=True)  # a secret containing another goes first


def _redact_pair(match: re.Match[str]) -> str:
    if match["quote"] is not None:
        return f"{match['key']}{match['quote']}{REDACTED}{match['quote']}"
    return f"{match['key']}{REDACTED}"


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
"""What an access log line carries as fields (uvicorn's access record arguments, in order)."""


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class RedactFilter(logging.Filter):
    """Redacts every record (message, arguments, extra fields, traceback) before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record, rewritten."""
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            for name, value in zip(ACCESS_FIELDS, args, strict=True):
                setattr(record, name, redact(value) if isinstance(value, str) else value)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value ...` (an access line's fields are already its message)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a text line (and its traceback below it)."""
        fields = "".join(
            f" {key}={json.dumps(value, default=str, ensure_ascii=False)}"
            for key, value in _extras(record).items()
            if key not in ACCESS_FIELDS
        )
        line = (
            f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}{fields}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


_HANDLER_NAME = "gateway-logs"


def log_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `fmt` ("json" or "text") lines to `stream` (stderr), secrets redacted."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    return handler


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    """Send every log line, uvicorn's access and error lines included, through one redacting handler.

    Run uvicorn with `log_config=None` afterwards, so that it keeps this configuration.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = log_handler(fmt)
    handler.set_name(_HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every URL, signed ones too


# --------------------------------------------------------------------------- start-up failures


def startup_failure(error: BaseException) -> str:
    """One sentence for an error that stopped a server from starting (the first of a group)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    text = str(error).strip() or "no details"
    return (
        text if type(error).__module__.startswith("gateway") else f"{type(error).__name__}: {text}"
    )


class OneLineStartupFailure:
    """Pure-ASGI wrapper: a failed lifespan start-up is reported as one line, not a traceback.

    Starlette reports the failure with the whole traceback as uvicorn's error message; this holds
    that message back and sends one naming the error instead (the traceback goes to DEBUG).
    """

    def __init__(self, app: ASGIApp, what: str = "cannot start") -> None:
        self.app = app
        self.what = what

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except Exception as error:
            if not held:
                raise
            logging.getLogger("gateway").debug("start-up failure", exc_info=error)
            message = f"{self.what}: {startup_failure(error)}"
            await send({"type": "lifespan.startup.failed", "message": message})
