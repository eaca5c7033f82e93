"""structlog setup for the hub: JSON events with stable keys, and an allow-list that keeps personal data out.

Only the keys in ALLOWED_KEYS reach the output; any other key is dropped and its name listed in
`dropped_keys`, so a careless `log.info(..., caller=name)` leaks nothing. Values under allowed
keys are ids, codes, counts and durations by construction of the call sites.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

ALLOWED_KEYS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "agency",
        "attempt",
        "backlog",
        "batch_size",
        "code",
        "consumer",
        "count",
        "distribution_id",
        "dropped_keys",
        "duration_ms",
        "error",
        "error_type",
        "exception",
        "field",
        "fields",
        "in_flight",
        "kind",
        "listen",
        "messages",
        "outcome",
        "lane",
        "task",
        "delivered",
        "path",
        "pid",
        "reason",
        "recipient_agency",
        "recipients",
        "replayed",
        "retry_after_ms",
        "rule",
        "scope",
        "sender_agency",
        "sequence",
        "servers",
        "session_id",
        "status",
        "stream",
        "url",
        "version",
    }
)


def traceback_without_values(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Structlog processor: turn exc_info into `exception`: the type and the stack, never the message.

    An exception's message may quote a value (personal data); its type and frames do not.
    """
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        exc_type, _exc, tb = exc_info
        if exc_type is not None:
            frames = "".join(traceback.format_tb(tb))
            event_dict["exception"] = f"{frames}{exc_type.__module__}.{exc_type.__qualname__}"
    return event_dict


def drop_unlisted_keys(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Structlog processor: remove keys not in ALLOWED_KEYS, naming them in dropped_keys."""
    dropped = [key for key in event_dict if key not in ALLOWED_KEYS]
    for key in dropped:
        del event_dict[key]
    if dropped:
        event_dict["dropped_keys"] = sorted(dropped)
    return event_dict


def configure(*, json: bool = True, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Configure structlog for the process: JSON lines (or console lines for the demo) on stderr."""
    global _level  # noqa: PLW0603 - the process's one logging level, read by debug_enabled
    _level = level
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            traceback_without_values,
            drop_unlisted_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


_level = logging.INFO


def debug_enabled() -> bool:
    """Whether debug events are written: hot paths (one event per delivery) check it before building one."""
    return _level <= logging.DEBUG


def get_logger(name: str) -> Any:
    """A structlog logger for a module."""
    return structlog.get_logger(name)
