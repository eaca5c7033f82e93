"""The hub's header parser returns what nats-py's own returns, for any header block."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client

from broker.store.nats_client import HubClient, parse_header_lines

# Bytes that matter to the parser: separators, every ASCII whitespace (\x1c-\x1f included, which
# str.isspace counts and bytes.strip does not), non-ASCII and bad UTF-8.
_pieces = st.sampled_from(
    [
        b":",
        b": ",
        b"\r\n",
        b" ",
        b"\t",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\x1f",
        b"\xc3\xa9",
        b"\xff",
        b"a",
        b"Nats-Msg-Id",
        b"x-1",
    ]
)
_line = st.lists(_pieces | st.binary(max_size=6), max_size=8).map(b"".join)
blocks = st.lists(_line, max_size=12).map(b"\r\n".join)


@given(blocks)
@example(b"Nats-Msg-Id: abc\r\nOpsroom-Rule: r1\r\n\r\n")
@example(b"\x1ca: v")  # whitespace only str.isspace sees, at the start of the name
@example(b": v\r\n a b : w\r\n\xc3\xa9: x\r\nk:\xff")
def test_the_hub_parser_agrees_with_nats_py(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_the_hub_client_uses_it() -> None:
    assert HubClient._parse_header_lines is parse_header_lines
    assert HubClient._parse_header_lines(b"A: 1\r\nB C: 2\r\nD:3") == {"A": "1", "D": "3"}
