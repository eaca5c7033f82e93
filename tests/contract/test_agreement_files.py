"""The published agreement schema, the shipped agreements, and the `opsroom policy` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def opsroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def test_published_schema_is_the_one_the_hub_uses() -> None:
    """deploy/agreements/agreement.schema.json and the packaged copy are the same file."""
    assert (ROOT / "broker" / "data" / "agreement.schema.json").read_bytes() == (
        ROOT / "deploy" / "agreements" / "agreement.schema.json"
    ).read_bytes()


def test_policy_check_accepts_the_shipped_agreements() -> None:
    """`opsroom policy check deploy/agreements` lists both agreements and exits 0."""
    result = opsroom("policy", "check", "deploy/agreements")
    assert 0 == result.returncode, result.stderr
    assert "patto-lodi-2025: 10 parties, 7 rules" in result.stdout
    assert "torino-112-sicurezza-integrata: 4 parties, 5 rules" in result.stdout


def test_policy_check_names_file_line_and_problem(tmp_path: Path) -> None:
    """A bad file makes check exit 1 with file:line: field: problem, and nothing is loaded."""
    text = (ROOT / "deploy" / "agreements" / "torino.yaml").read_text()
    (tmp_path / "bad.yaml").write_text(
        text.replace("payloads: [incident]\n  - id: urgent", "payloads: [incidnet]\n  - id: urgent")
    )
    result = opsroom("policy", "check", str(tmp_path))
    assert 1 == result.returncode
    line = next(n for n, row in enumerate((tmp_path / "bad.yaml").read_text().splitlines(), 1) if "incidnet" in row)
    assert f"{tmp_path / 'bad.yaml'}:{line}: rules[0].payloads[0]: must be one of" in result.stderr
    assert "nothing would be loaded" in result.stderr


def test_policy_explain_says_who_gets_what_and_why() -> None:
    """explain on the Lodi example: a summer Saturday night selects the Carabinieri by the night-venues rule."""
    result = opsroom("policy", "explain", "docs/examples/envelope-lodi-night.json", "--at", "2026-07-18T22:30:00+02:00")
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    assert "event in comuni: 098031" in out
    assert "applies  patto-lodi-2025/summer-night-venues: applies" in out
    assert "it.cc.cp.lo by patto-lodi-2025/summer-night-venues" in out
    winter = opsroom("policy", "explain", "docs/examples/envelope-lodi-night.json", "--at", "2026-01-13T22:30:00+01:00")
    assert "no       patto-lodi-2025/summer-night-venues: outside the rule's schedule" in winter.stdout
    assert "it.cc.cp.lo" not in winter.stdout.split("recipients:")[1]
