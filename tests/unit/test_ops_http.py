"""The ops endpoint's routing: /livez and /readyz in plain text, everything else to the Prometheus app."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.ops.metrics import ops_app


def call(
    path: str, method: str = "GET", ready: tuple[bool, str] = (True, "ready")
) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def metrics(_environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
        return [b"# metrics\n"]

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(ops_app(metrics, lambda: ready)({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    return seen["status"], seen["headers"], body


def test_livez_and_readyz() -> None:
    """/livez is 200 "alive"; /readyz 200 "ready", or 503 with the reason; neither cached."""
    assert ("200 OK", b"alive\n") == call("/livez")[::2]
    assert ("200 OK", b"ready\n") == call("/readyz")[::2]
    status, headers, body = call("/readyz", ready=(False, "starting"))
    assert ("503 Service Unavailable", b"starting\n") == (status, body)
    assert "no-store" == headers["Cache-Control"]
    assert str(len(body)) == headers["Content-Length"]


def test_head_and_other_methods() -> None:
    """HEAD answers the status without a body; other methods get 405."""
    assert ("503 Service Unavailable", b"") == call("/readyz", "HEAD", (False, "stopping"))[::2]
    assert "405 Method Not Allowed" == call("/readyz", "POST")[0]


def test_other_paths_are_the_metrics() -> None:
    """/metrics (and any other path, as before) is the Prometheus exposition."""
    assert ("200 OK", b"# metrics\n") == call("/metrics")[::2]
