"""Owns the hub's NATS client class: nats-py's Client with a faster parser for message headers.

Every delivery the hub pulls from JetStream carries about a dozen headers (receipt, rule, expiry,
plan, claim), and nats-py 2.16 checks each header name for whitespace one character at a time
in a Python generator: under cProfile at bench/run.py's max rate that check was the largest
single cost inside nats-py (four million generator steps for 20,000 deliveries). HubClient
parses header blocks with the same rules, the whitespace check done by str.split in C.
`parse_header_lines` returns what nats-py's `Client._parse_header_lines` returns for any
header block (tests/unit/test_nats_headers.py compares the two on generated blocks).
"""

from __future__ import annotations

from nats.aio.client import Client

_CRLF = b"\r\n"


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Name: Value` lines to a dict: names ASCII without whitespace, values stripped and decoded (bad UTF-8 replaced).

    A line without a colon, a name that is not ASCII and a name with whitespace inside are
    skipped, as nats-py does.
    """
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key.split() != [key]:  # whitespace inside (str.isspace's whitespace, as nats-py checks)
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class HubClient(Client):
    """nats-py's client, parsing message headers with parse_header_lines."""

    _parse_header_lines = staticmethod(parse_header_lines)
