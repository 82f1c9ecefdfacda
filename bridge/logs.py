"""Logging: one JSON line per event (or a readable console line), ids and timings only.

The formatter emits only an allowlist of extra fields, so a careless `extra=` cannot leak a
payload, and exceptions are logged as their type and stack without the message (third-party
messages, e.g. validation errors, can quote input values).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any

import orjson

ALLOWED_EXTRAS = (
    "delivery_id",
    "mapping",
    "provider",
    "attempt",
    "duration_ms",
    "status",
    "outcome",
    "reason",
    "command",
    "action",
    "retry_in_s",
    "listen",
    "count",
)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in ALLOWED_EXTRAS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["stack"] = "".join(traceback.format_tb(record.exc_info[2]))[-2000:]
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in ALLOWED_EXTRAS
            if record.__dict__.get(name) is not None
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if extras:
            line += f"  [{extras}]"
        if record.exc_info and record.exc_info[0] is not None:
            line += f"  ({record.exc_info[0].__name__})"
        return line


def configure(fmt: str, level: str = "info") -> None:
    # We never log the caller's file and line: skip the stack walk on every record.
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # arq logs one line per job with its arguments; ours are ids only, but keep it quiet.
    logging.getLogger("arq").setLevel(logging.WARNING)
    # httpx logs every request URL at INFO; enrich URLs can carry record ids. We log our own.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
