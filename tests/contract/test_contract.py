"""The contract in protos/: linted, generated code current, wire tricks sound, enums aligned with the standards."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.store.v1 import store_pb2

from broker.errors import Reason
from broker.validate import codelists
from broker.validate.checker import RULES
from tests import factories as f

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CAP_XSD = Path(__file__).parent / "standards" / "cap" / "CAP-v1.2.xsd"


def test_buf_lint_passes() -> None:
    """buf lint (STANDARD and COMMENTS rules) finds nothing in protos/."""
    result = subprocess.run([str(BIN / "buf"), "lint"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_buf_lint_can_fail(tmp_path: Path) -> None:
    """The lint check is real: a badly named enum value in a copy of the contract is reported."""
    copy = tmp_path / "repo"
    (copy / "protos").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(ROOT / "protos" / "opsroom"), str(copy / "protos")], check=True)
    subprocess.run(["cp", "-r", str(ROOT / "protos" / "third_party"), str(copy / "protos")], check=True)
    (copy / "buf.yaml").write_text((ROOT / "buf.yaml").read_text())
    hub_proto = copy / "protos" / "opsroom" / "hub" / "v1" / "hub.proto"
    hub_proto.write_text(hub_proto.read_text().replace("DELIVERY_STATE_STORED = 1", "STORED = 1"))
    result = subprocess.run([str(BIN / "buf"), "lint"], cwd=copy, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert 'should be prefixed with "DELIVERY_STATE_"' in result.stdout


def test_generated_code_is_current() -> None:
    """The committed Python code is what protoc generates from the .proto files now."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_enums_start_with_unspecified() -> None:
    """Every enum of the contract has 0 = <NAME>_UNSPECIFIED."""
    modules = [common_pb2, incident_pb2, alert_pb2, hub_pb2]
    bad = []
    for module in modules:
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            expected = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_UNSPECIFIED"
            if zero != expected:
                bad.append((enum.full_name, zero))
    assert bad == []


def test_raw_delivery_frames_parse_as_connect_responses() -> None:
    """The hub's pre-serialized frames (store.v1.RawConnectResponse) are valid hub.v1.ConnectResponse bytes."""
    env = f.envelope()
    raw = store_pb2.RawConnectResponse()
    raw.deliveries.backlog = 7
    raw.deliveries.deliveries.add(sequence=42, envelope=env.SerializeToString(), attempt=2).stored_at.FromSeconds(9)
    expected = hub_pb2.ConnectResponse(
        deliveries=hub_pb2.DeliveryBatch(
            backlog=7, deliveries=[hub_pb2.Delivery(sequence=42, envelope=env, attempt=2, stored_at=f.ts())]
        )
    )
    expected.deliveries.deliveries[0].stored_at.FromSeconds(9)
    assert expected == hub_pb2.ConnectResponse.FromString(raw.SerializeToString())


def test_raw_messages_mirror_field_numbers() -> None:
    """RawDelivery and RawDeliveryBatch keep Delivery's and DeliveryBatch's field numbers."""
    pairs = [
        (store_pb2.RawDelivery, hub_pb2.Delivery),
        (store_pb2.RawDeliveryBatch, hub_pb2.DeliveryBatch),
    ]
    for raw, real in pairs:
        assert {f.name: f.number for f in raw.DESCRIPTOR.fields} == {f.name: f.number for f in real.DESCRIPTOR.fields}
    assert hub_pb2.ConnectResponse.DESCRIPTOR.fields_by_name["deliveries"].number == 2


def _cap_enumerations() -> dict[str, list[str]]:
    """CAP element name -> enumerated values, from the official XSD."""
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    tree = ET.parse(CAP_XSD)
    out: dict[str, list[str]] = {}
    for element in tree.iter("{http://www.w3.org/2001/XMLSchema}element"):
        values = [e.get("value", "") for e in element.iterfind(".//xs:enumeration", ns)]
        if values and element.get("name"):
            out[str(element.get("name"))] = values
    return out


def _names(enum: object, prefix: str) -> list[str]:
    values = enum.DESCRIPTOR.values  # type: ignore[attr-defined]
    return [v.name.removeprefix(prefix) for v in values if v.number != 0]


@pytest.mark.parametrize(
    ("element", "enum", "prefix"),
    [
        ("category", alert_pb2.Category, "CATEGORY_"),
        ("urgency", alert_pb2.Urgency, "URGENCY_"),
        ("severity", alert_pb2.Severity, "SEVERITY_"),
        ("certainty", alert_pb2.Certainty, "CERTAINTY_"),
        ("scope", alert_pb2.Scope, "SCOPE_"),
    ],
)
def test_alert_enums_are_cap_one_to_one(element: str, enum: object, prefix: str) -> None:
    """Alert enums list exactly CAP 1.2's values, in CAP's order."""
    cap = [v.upper() for v in _cap_enumerations()[element]]
    assert cap == _names(enum, prefix)


def test_status_and_kind_cover_cap() -> None:
    """Every CAP status but Draft, and every CAP msgType, has its value in Status and Kind."""
    cap = _cap_enumerations()
    statuses = {v.upper() for v in cap["status"]} - {"DRAFT"}
    assert statuses <= set(_names(common_pb2.Status, "STATUS_"))
    kinds = {"ALERT": "REPORT", "UPDATE": "UPDATE", "CANCEL": "CANCEL", "ACK": "ACK", "ERROR": "ERROR"}
    assert {kinds[v.upper()] for v in cap["msgType"]} <= set(_names(common_pb2.Kind, "KIND_"))


def test_incident_status_is_from_the_eido_registry() -> None:
    """Every IncidentStatus value is a value of the EIDO incident-status-common registry."""
    registry = {re.sub(r"[^A-Z]", "", v.upper()) for v in _registry("incident-status-common.csv")}
    ours = {v.replace("_", "") for v in _names(incident_pb2.IncidentStatus, "INCIDENT_STATUS_")}
    assert set() == ours - registry


def _registry(name: str) -> list[str]:
    text = (ROOT / "broker" / "data" / "eido" / name).read_text(encoding="utf-8").splitlines()
    return [line.split(",")[0] for line in text[1:] if line]


def test_code_lists_are_the_real_ones() -> None:
    """The code lists hold the real registries: sizes and well-known values."""
    lists = codelists.load()
    assert {"FIGHT", "VEHSTLN", "ROBBERY", "BURGLARY"} <= lists.eido_incident_types
    assert {"PSW/RIOT", "TRP/COL", "PSW"} <= lists.emsi_categories
    assert {"001272", "098031", "015146"} <= lists.comuni  # Torino, Lodi, Milano
    assert len(lists.comuni) > 7890
    assert len(lists.provinces) == 107
    assert len(lists.regions) == 20


def _doc_table(heading_row: str) -> list[list[str]]:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index(heading_row)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_error_catalogue_documents_every_reason_with_its_code() -> None:
    """docs/errors.md lists each Reason once, with the gRPC code the hub sends."""
    rows = _doc_table("| reason | gRPC code | raised when | what the client should do |")
    documented = {row[0]: row[1] for row in rows}
    assert {r.name: r.code.name for r in Reason} == documented
    assert len(rows) == len(documented)


def test_error_catalogue_documents_every_rule() -> None:
    """docs/errors.md lists exactly the validation rule ids the validator can report."""
    rows = _doc_table("| rule | meaning |")
    assert set(RULES) == {row[0] for row in rows}


VENDORED = {
    "google/rpc/status.proto": "google.rpc.status_pb2",
    "google/rpc/error_details.proto": "google.rpc.error_details_pb2",
    "grpc/health/v1/health.proto": "grpc_health.v1.health_pb2",
}


@pytest.mark.parametrize("proto", sorted(VENDORED))
def test_vendored_protos_match_what_the_hub_sends(proto: str, tmp_path: Path) -> None:
    """Each proto in protos/third_party compiles from protos/ alone and declares the messages (names, field numbers
    and types) and services of the module the hub itself uses, so a client generated from it reads what the hub sends.
    """
    import importlib  # noqa: PLC0415
    from importlib import resources  # noqa: PLC0415

    from google.protobuf import descriptor_pb2  # noqa: PLC0415
    from grpc_tools import protoc  # noqa: PLC0415

    out = tmp_path / "set.pb"
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{ROOT / 'protos' / 'third_party'}", f"-I{well_known}", f"--descriptor_set_out={out}", proto]
    assert 0 == protoc.main(args)
    vendored = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    used = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(VENDORED[proto]).DESCRIPTOR.CopyToProto(used)

    vendored_package, vendored_messages, vendored_services = _shape(vendored)
    used_package, used_messages, used_services = _shape(used)
    assert vendored_package == used_package
    assert used_messages.items() <= vendored_messages.items()
    for name, methods in used_services.items():
        assert methods <= vendored_services[name]


def _shape(file: Any) -> tuple[str, dict[str, list[tuple[str, int, int, str]]], dict[str, set[tuple[str, str, str]]]]:
    """A FileDescriptorProto's package, messages (fields: name, number, type, type name) and services (methods)."""
    messages = {m.name: sorted((f.name, f.number, f.type, f.type_name) for f in m.field) for m in file.message_type}
    services = {s.name: {(m.name, m.input_type, m.output_type) for m in s.method} for s in file.service}
    return str(file.package), messages, services


def test_contract_doc_lists_every_file_dev_certs_writes(tmp_path: Path) -> None:
    """docs/contract.md's table of `opsroom dev-certs` files names exactly the files it writes."""
    from broker.cli import main  # noqa: PLC0415

    assert 0 == main(["dev-certs", "--out", str(tmp_path / "pki"), "--agency", f.PL])
    written = {str(p.relative_to(tmp_path / "pki")) for p in (tmp_path / "pki").rglob("*") if p.is_file()}
    text = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    section = text[text.index("## Development certificates") : text.index("## Readiness")]
    documented = {
        name.removeprefix("DIR/").replace("<agency id>", f.PL)
        for row in section.splitlines()
        if row.startswith("| `DIR/")
        for name in re.findall(r"`(DIR/[^`]+)`", row.split("|")[1])
    }
    assert written == documented
