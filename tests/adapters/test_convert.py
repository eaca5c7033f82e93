"""`opsroom convert`: each format's documents to an envelope and across formats; a bad document exits 2 with one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opsroom.envelope.v1 import envelope_pb2

from adapters import cap, convert, eido
from adapters.document import Context
from tests import factories as f
from tests.adapters.test_cap import PLATE_READER

EXAMPLES = Path(__file__).parent / "examples"
COMPANIES = ["--company", "QUESTURA-MI=it.ps.questura-mi", "--company", "CC-MI=it.cc.mi"]
CARD = EXAMPLES / "nue112" / "example-synthetic-contactcard.xml"


def run(*argv: str) -> tuple[int, str, str]:
    """`opsroom convert ARGV` in this process: status, standard output, standard error."""
    parser = convert.argparse.ArgumentParser(prog="opsroom")
    convert.add_command(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    status = convert.run(parser.parse_args(["convert", *argv]), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("fmt", "path", "origin"),
    [
        ("cap", EXAMPLES / "cap" / "cap-1.2-appendix-A2.xml", "cap-1.2"),
        ("eido", EXAMPLES / "eido" / "sample-call-transfer-eido.json", "eido-1.0"),
        ("nue112", CARD, "nue112-rev3"),
        ("emsi", EXAMPLES / "emsi" / "example-emsi-DC-message.json", "emsi-1.0"),
        ("emsi", EXAMPLES / "emsi" / "example-EMSI-Complet-DC-RDC-OPG-message.xml", "emsi-1.0"),
    ],
)
def test_each_format_prints_the_envelope_as_json(fmt: str, path: Path, origin: str) -> None:
    status, out, err = run("--from", fmt, *COMPANIES, str(path))
    assert (status, err) == (0, "")
    printed = json.loads(out)
    assert printed["origin"]["format"] == origin
    assert printed["sender"]["agency_id"] == convert.DEFAULT_AGENCY


def test_a_card_becomes_an_eido_with_its_caller_and_classification() -> None:
    status, out, err = run("--from", "nue112", "--to", "eido", "--agency", "it.cur.milano", *COMPANIES, str(CARD))
    assert (status, err) == (0, "")
    env = eido.decode(out.encode(), Context(agency_id="it.cc.mi"))
    assert env.incident.type.eido_code == "FIGHT"
    assert env.incident.call.caller.phone == "+39333000000"
    assert env.incident.description.startswith("Persone che litigano")


def test_a_card_cannot_become_cap_and_says_why() -> None:
    status, out, err = run("--from", "nue112", "--to", "cap", *COMPANIES, str(CARD))
    assert (status, out) == (2, "")
    assert err.startswith("opsroom convert: payload: ")
    assert err.count("\n") == 1


def test_validate_passes_a_current_plate_reader_alert(tmp_path: Path) -> None:
    env = cap.decode(PLATE_READER, Context(agency_id=f.PL))
    env.sent_at.FromDatetime(datetime.now(UTC))
    env.ClearField("expires_at")
    for info in env.alert.infos:
        info.ClearField("expires")
    path = tmp_path / "alert.xml"
    path.write_bytes(cap.encode(env))
    status, out, err = run("--from", "cap", "--agency", f.PL, "--validate", str(path))
    assert (status, err) == (0, "")
    assert json.loads(out)["alert"]["vehicles"][0]["plate"]


def test_validate_reports_each_rule_the_hub_would_refuse() -> None:
    status, _out, err = run("--from", "cap", "--validate", str(EXAMPLES / "cap" / "cap-1.2-appendix-A1.xml"))
    assert status == 2
    lines = err.splitlines()
    assert lines
    assert all(line.startswith("opsroom convert: envelope ") for line in lines)
    assert any("sent_at" in line and "(too_old)" in line for line in lines)


def test_bad_company_pair_is_refused() -> None:
    status, _out, err = run("--from", "nue112", "--company", "QUESTURA-MI", str(CARD))
    assert status == 2
    assert "--company: 'QUESTURA-MI' is not CODE=AGENCY" in err


@pytest.mark.parametrize(
    ("argv", "stdin", "expected"),
    [
        (
            ["--from", "cap", "-"],
            b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.1"/>',
            "opsroom convert: /alert: is CAP 1.1",
        ),
        (["--from", "eido", "-"], b"{", "opsroom convert: /: is not valid JSON"),
        (["--from", "nue112", "-"], b"<!DOCTYPE x><x/>", "opsroom convert: /: has a DOCTYPE"),
        (["--from", "cap", "/nonexistent/alert.xml"], b"", "opsroom convert: /nonexistent/alert.xml: cannot read"),
    ],
)
def test_the_command_exits_2_with_one_line(argv: list[str], stdin: bytes, expected: str) -> None:
    """As an integrator runs it: a process, its status and its standard error."""
    done = subprocess.run(
        [sys.executable, "-m", "adapters.convert", *argv], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stdout == b""
    err = done.stderr.decode()
    assert err.startswith(expected), err
    assert err.count("\n") == 1


def test_the_opsroom_entry_point_has_the_command() -> None:
    opsroom = Path(sys.executable).parent / "opsroom"
    done = subprocess.run(
        [str(opsroom), "convert", "--from", "cap", str(EXAMPLES / "cap" / "cap-1.2-appendix-A4.xml")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    env = envelope_pb2.Envelope()
    convert.json_format.Parse(done.stdout, env)
    assert env.origin.identifier == "KAR0-0306112239-SW"
    assert len(env.alert.infos) == 2
