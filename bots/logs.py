"""Logging set-up: one line per event, and no secret ever reaches a handler's output.

Tracebacks are for debugging: below DEBUG an error line ends with the exception's type and
message only; at DEBUG the whole traceback follows on the same line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

# Telegram bot tokens look like 123456:AAH...; libraries log them inside request URLs.
_TELEGRAM_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")
_MASK = "***"


class RedactingFormatter(logging.Formatter):
    """Formats a record, then masks known secrets and token-shaped strings, tracebacks included."""

    def __init__(self, secrets: Iterable[str] = (), *, tracebacks: bool = True) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._tracebacks = tracebacks

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        if self._tracebacks:
            return super().formatException(ei)
        _, value, _ = ei
        return f"{type(value).__name__}: {value}"

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return super().formatStack(stack_info) if self._tracebacks else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        text = _TELEGRAM_TOKEN.sub(_MASK, text)
        return text.replace("\n", " | ")


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Route every logger to stderr through the redacting formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(secrets, tracebacks=level == "DEBUG"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO, and Telegram's URLs carry the token.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # Alembic narrates each migration context at INFO ("Context impl SQLiteImpl."), noise to
    # an operator running `toonify quota ...`; DEBUG still shows it.
    logging.getLogger("alembic").setLevel(
        logging.WARNING if root.level == logging.INFO else root.level
    )
