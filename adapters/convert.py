"""`opsroom convert`: decode a standard document, print the envelope as JSON or encode it again.

Integrators test their files with it before connecting:

    opsroom convert --from cap alert.xml                 # the envelope, as protobuf JSON
    opsroom convert --from nue112 --to eido card.xml     # the card as an EIDO
    opsroom convert --from emsi --validate dc.json       # also the hub's own validation
    opsroom convert --from nue112 --company QUESTURA-MI=it.ps.questura-mi card.xml
    opsroom convert --from cap --to emsi --syntax xml alert.xml
    cat alert.xml | opsroom convert --from cap -

A document that cannot be decoded (or an envelope that the target format cannot carry) exits with
status 2 and one line on stderr naming the element or field path and what is wrong; with
--validate, each rule the hub would refuse the envelope for is one line too, and the status is 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, cast

from google.protobuf import json_format
from opsroom.envelope.v1 import envelope_pb2

from adapters import nue112
from adapters.document import Context, DocumentError
from broker.validate import codelists
from broker.validate.checker import ValidationContext, validate_envelope

# Format name on the command line -> the codec module.
CODECS = {"cap": "adapters.cap", "eido": "adapters.eido", "emsi": "adapters.emsi", "nue112": "adapters.nue112"}
# The agency a decoded envelope is sent as when --agency is not given (a connector uses its own).
DEFAULT_AGENCY = "it.convert"


class Codec(Protocol):
    """What every codec module offers."""

    FORMAT: str

    def decode(self, data: bytes, ctx: Context, **options: Any) -> envelope_pb2.Envelope:
        """The envelope of a document."""

    def encode(self, env: envelope_pb2.Envelope, **options: Any) -> bytes:
        """The document of an envelope."""


def codec(name: str) -> Codec:
    """The codec module of a format name."""
    return cast("Codec", importlib.import_module(CODECS[name]))


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `convert` to the opsroom command's subcommands."""
    p = commands.add_parser(
        "convert", help="decode a CAP, EIDO, EMSI or 112 NUE document; print the envelope or re-encode it"
    )
    p.add_argument("--from", dest="source", choices=sorted(CODECS), required=True, help="format of the document")
    p.add_argument("--to", dest="target", choices=[*sorted(CODECS), "json"], default="json", help="default: json")
    p.add_argument("--agency", default=DEFAULT_AGENCY, help=f"sending agency id (default {DEFAULT_AGENCY})")
    p.add_argument("--validate", action="store_true", help="also check the envelope as the hub would")
    p.add_argument(
        "--company",
        action="append",
        default=[],
        metavar="CODE=AGENCY",
        help="nue112: a CUR company code and the agency id it stands for; repeat for several",
    )
    p.add_argument("--syntax", choices=["json", "xml"], default="json", help="emsi output: json (default) or xml")
    p.add_argument("file", help="the document, or - for standard input")


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run `opsroom convert`; 0 on success, 2 on a bad document or (with --validate) a refused envelope."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"opsroom convert: {args.file}: cannot read ({exc.strerror})", file=err)
        return 2
    try:
        companies = _companies(args.company)
        env = codec(args.source).decode(data, Context(agency_id=args.agency), **_options(args.source, args, companies))
    except DocumentError as exc:
        print(f"opsroom convert: {exc}", file=err)
        return 2
    status = 0
    if args.validate:
        ctx = ValidationContext(codes=codelists.load(), is_registered=lambda _agency: True)
        for violation in validate_envelope(env, ctx, datetime.now(UTC)):
            print(f"opsroom convert: envelope {violation.field}: {violation.description} ({violation.rule})", file=err)
            status = 2
    if args.target == "json":
        out.write(json_format.MessageToJson(env, preserving_proto_field_name=True) + "\n")
        return status
    try:
        encoded = codec(args.target).encode(env, **_options(args.target, args, companies, encoding=True))
    except DocumentError as exc:
        print(f"opsroom convert: {exc}", file=err)
        return 2
    out.write(encoded.decode("utf-8"))
    if not encoded.endswith(b"\n"):
        out.write("\n")
    return status


def _companies(pairs: Sequence[str]) -> dict[str, str]:
    try:
        return nue112.company_directory(pairs)
    except ValueError as exc:
        raise DocumentError("--company", str(exc)) from None


def _options(
    fmt: str, args: argparse.Namespace, companies: dict[str, str], *, encoding: bool = False
) -> dict[str, Any]:
    """The format's own keyword options: the CUR's company directory, EMSI's output syntax."""
    if fmt == "nue112":
        return {"companies": companies}
    if fmt == "emsi" and encoding:
        return {"syntax": args.syntax}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapters.convert`, the same as `opsroom convert`."""
    parser = argparse.ArgumentParser(prog="opsroom")
    add_command(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["convert", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())
