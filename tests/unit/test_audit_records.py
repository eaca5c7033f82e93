"""Audit records of an accepted envelope: collection, disclosures, alteration, combination; ids and paths only."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.audit.v1 import audit_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.audit.records import (
    BACKLOG_WHY,
    HUB,
    Caller,
    View,
    backlog_read,
    hub_record,
    present_fields,
    publish_records,
    under,
)
from broker.audit.records import (
    withheld as withheld_by,
)
from broker.policy.redact import CATEGORIES, mask_for, redact
from broker.policy.routing import Route
from broker.publish.copies import Copies
from tests import factories as f

CERT = "c0" * 32
CALLER = Caller(f.CUR, CERT)
AT = datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)
RULE_PS = "agr-cur-ps/incidents"
RULE_PL = "agr-cur-pl/municipal"


def view_of(recipient: str, rule: str, copy: bytes, delivered: envelope_pb2.Envelope, withheld: Iterable[str]) -> View:
    """The View of a delivered copy, its fields read from the copy itself (an oracle for the hub's derivation)."""
    return View(
        recipient, rule, hashlib.sha256(copy).digest(), tuple(present_fields(delivered)), tuple(sorted(withheld))
    )


def ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def views_of(env: envelope_pb2.Envelope) -> list[View]:
    """The views the publisher makes: QUESTURA sees everything, PL has no personal-data grant."""
    everything = frozenset(present_fields(env))
    out = []
    for recipient, rule, mask in ((f.QUESTURA, RULE_PS, mask_for(CATEGORIES, ())), (f.PL, RULE_PL, mask_for((), ()))):
        copy = redact(env, mask)
        withheld = withheld_by(env, copy, everything, mask.hidden)
        out.append(view_of(recipient, rule, copy.SerializeToString(deterministic=True), copy, withheld))
    return out


def actions(records: list[audit_pb2.AuditRecord]) -> list[int]:
    return [r.action for r in records]


# -- publish_records ----------------------------------------------------------------------------------------------


def test_report_with_two_views_makes_one_collection_and_two_disclosures() -> None:
    """A REPORT to two recipients: COLLECTION then one DISCLOSURE per view, in order."""
    env = f.envelope(sent=f.NOW)
    digest = hashlib.sha256(env.SerializeToString()).digest()
    views = views_of(env)
    records = publish_records(env, CALLER, digest, views, AT)
    assert actions(records) == [
        audit_pb2.ACTION_COLLECTION,
        audit_pb2.ACTION_DISCLOSURE,
        audit_pb2.ACTION_DISCLOSURE,
    ]
    collection, to_ps, to_pl = records
    expected_actor = audit_pb2.Actor(
        agency_id=f.CUR, operator_id="OP-CUR-017", workstation_id="PDL-3", certificate_sha256=CERT
    )
    for r in records:
        assert r.actor == expected_actor
        assert r.at == ts(AT)
        assert r.distribution_id == env.distribution_id
        assert list(r.incident_ids) == [f.INCIDENT_ID]
        assert (r.kind, r.status) == ("REPORT", "ACTUAL")
        assert r.why.law == "d.l. 14/2017 art. 2"
        assert r.why.purpose == "PUBLIC_SECURITY"
    assert collection.data_sha256 == digest
    assert (collection.recipient, list(collection.fields), list(collection.withheld)) == ("", [], [])
    assert (collection.why.rule, collection.why.agreement_id) == ("", "")

    assert to_ps.recipient == f.QUESTURA
    assert (to_ps.why.rule, to_ps.why.agreement_id) == (RULE_PS, "agr-cur-ps")
    assert to_ps.data_sha256 == views[0].data_sha256
    assert list(to_ps.fields) == present_fields(env)
    assert list(to_ps.withheld) == []
    assert "incident.call.caller.name" in to_ps.fields

    assert to_pl.recipient == f.PL
    assert (to_pl.why.rule, to_pl.why.agreement_id) == (RULE_PL, "agr-cur-pl")
    assert to_pl.data_sha256 == views[1].data_sha256 != views[0].data_sha256
    for path in ("incident.call.caller.name", "incident.call.caller.phone", "incident.vehicles.plate"):
        assert path in to_pl.withheld
        assert path not in to_pl.fields
    assert "incident.notes.text" in to_pl.withheld
    assert "incident.vehicles.make" in to_pl.fields
    assert sorted([*to_pl.fields, *to_pl.withheld]) == present_fields(env)


def test_update_adds_one_alteration_with_linked() -> None:
    """An UPDATE referring to an earlier message: COLLECTION, ALTERATION (linked to it), then the disclosures."""
    earlier = str(uuid.uuid4())
    env = f.envelope(kind=common_pb2.KIND_UPDATE, references=((earlier, f.CUR),), closure=f.closure())
    records = publish_records(env, CALLER, b"\x01" * 32, views_of(env), AT)
    assert actions(records) == [
        audit_pb2.ACTION_COLLECTION,
        audit_pb2.ACTION_ALTERATION,
        audit_pb2.ACTION_DISCLOSURE,
        audit_pb2.ACTION_DISCLOSURE,
    ]
    assert list(records[1].linked) == [earlier]
    assert records[1].kind == "UPDATE"
    assert records[1].data_sha256 == b"\x01" * 32


def test_cancel_adds_one_alteration() -> None:
    """A CANCEL is an alteration too (and not a combination)."""
    earlier = str(uuid.uuid4())
    env = f.envelope(kind=common_pb2.KIND_CANCEL, references=((earlier, f.CUR),), alert=f.alert())
    records = publish_records(env, CALLER, b"\x02" * 32, [], AT)
    assert actions(records) == [audit_pb2.ACTION_COLLECTION, audit_pb2.ACTION_ALTERATION]
    assert list(records[1].linked) == [earlier]


def test_report_with_references_adds_one_combination() -> None:
    """A REPORT linking two earlier messages: one COMBINATION listing both."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    env = f.envelope(references=((a, f.CUR), (b, f.QUESTURA)))
    records = publish_records(env, CALLER, b"\x03" * 32, views_of(env), AT)
    assert actions(records) == [
        audit_pb2.ACTION_COLLECTION,
        audit_pb2.ACTION_COMBINATION,
        audit_pb2.ACTION_DISCLOSURE,
        audit_pb2.ACTION_DISCLOSURE,
    ]
    assert list(records[1].linked) == [a, b]


def test_report_without_references_has_no_combination_nor_alteration() -> None:
    """No references, no views: only the collection record."""
    env = f.envelope()
    assert actions(publish_records(env, CALLER, b"", [], AT)) == [audit_pb2.ACTION_COLLECTION]


def test_agreement_id_from_the_legal_basis_when_the_rule_has_none() -> None:
    """A reply-to-sender rule has no agreement part: the disclosure takes the envelope's stated agreement."""
    env = f.envelope()
    env.legal_basis.agreement_id = "agr-stated"
    view = View(f.QUESTURA, "reply-to-sender", b"\x04" * 32, ("incident.id",), ())
    records = publish_records(env, CALLER, b"", [view], AT)
    assert (records[0].why.agreement_id, records[0].why.rule) == ("agr-stated", "")
    assert (records[1].why.agreement_id, records[1].why.rule) == ("agr-stated", "reply-to-sender")


def test_no_personal_value_enters_the_records() -> None:
    """Caller name and phone, IMSI, plates and free-text notes set in the envelope appear in no record's bytes."""
    envs = [
        f.envelope(),
        f.envelope(alert=f.alert()),
        f.envelope(kind=common_pb2.KIND_REQUEST, handover_request=f.handover_request()),
        f.envelope(kind=common_pb2.KIND_UPDATE, references=((str(uuid.uuid4()), f.CUR),), incident=f.incident()),
    ]
    for env in envs:
        serialized = env.SerializeToString()
        assert f.PLATE.encode() in serialized  # the values are there to leak
        records = publish_records(env, CALLER, hashlib.sha256(serialized).digest(), views_of(env), AT)
        data = b"".join(r.SerializeToString() for r in records)
        for value in f.PERSONAL_VALUES:
            assert value.encode() not in data, value
        assert b"lite in strada" not in data  # the incident's description


# -- present_fields, under ----------------------------------------------------------------------------------------


def test_present_fields_skips_the_header_and_stops_at_timestamps() -> None:
    """Only payload leaves, repeated elements sharing a path, timestamps as leaves, sorted."""
    env = envelope_pb2.Envelope(distribution_id="d", incident_ids=["i"], sent_at=ts(AT), recipients=["x"])
    env.incident.id = "i"
    env.incident.occurred_at.CopyFrom(ts(AT))
    env.incident.vehicles.add(plate="AA000AA", make="Fiat")
    env.incident.vehicles.add(plate="BB000BB")
    env.incident.notes.add(text="x")
    assert present_fields(env) == [
        "incident.id",
        "incident.notes.text",
        "incident.occurred_at",
        "incident.vehicles.make",
        "incident.vehicles.plate",
    ]


def test_present_fields_with_prefix_and_no_skip() -> None:
    """A prefix is prepended; with an empty skip set the header fields are listed too."""
    env = envelope_pb2.Envelope(distribution_id="d", sent_at=ts(AT))
    env.sender.agency_id = f.CUR
    assert present_fields(env, "envelope", skip=frozenset()) == [
        "envelope.distribution_id",
        "envelope.sender.agency_id",
        "envelope.sent_at",
    ]
    assert present_fields(env) == []


PATHS = frozenset(
    {
        "incident.call.call_id",
        "incident.call.caller.name",
        "incident.call.caller.phone",
        "incident.caller",
        "incident.caller.name",
        "incident.description",
        "incident.vehicles.plate",
        "incident.vehicles.make",
    }
)


def test_under_nothing_hidden() -> None:
    assert under(PATHS, frozenset()) == frozenset()
    assert under(frozenset(), frozenset({"incident"})) == frozenset()


def test_under_exact_path() -> None:
    assert under(PATHS, frozenset({"incident.description"})) == {"incident.description"}


def test_under_nested_paths() -> None:
    """A hidden message hides every path inside it, at any depth."""
    assert under(PATHS, frozenset({"incident.call.caller"})) == {
        "incident.call.caller.name",
        "incident.call.caller.phone",
    }
    assert under(PATHS, frozenset({"incident.call"})) == {
        "incident.call.call_id",
        "incident.call.caller.name",
        "incident.call.caller.phone",
    }
    assert under(PATHS, frozenset({"incident"})) == PATHS


def test_under_is_by_path_component_not_string_prefix() -> None:
    """Hidden "incident.call" does not hide "incident.caller", nor "incident.vehicles.pl" the plate."""
    hidden = under(PATHS, frozenset({"incident.call"}))
    assert "incident.caller" not in hidden
    assert "incident.caller.name" not in hidden
    assert under(PATHS, frozenset({"incident.vehicles.pl", "incident.desc"})) == frozenset()


def test_under_a_deeper_hidden_path_does_not_hide_its_parent() -> None:
    """Hiding the plate hides the plate only, not the vehicle's other fields."""
    assert under(PATHS, frozenset({"incident.vehicles.plate", "incident.call.caller.name.x"})) == {
        "incident.vehicles.plate"
    }


def test_under_several_hidden_paths() -> None:
    assert under(PATHS, frozenset({"incident.caller", "incident.vehicles.plate", "nothing.here"})) == {
        "incident.caller",
        "incident.caller.name",
        "incident.vehicles.plate",
    }


# -- other records ------------------------------------------------------------------------------------------------


def test_view_of_hashes_the_copy_and_sorts_withheld() -> None:
    env = f.envelope()
    copy = env.SerializeToString()
    view = view_of(f.PL, RULE_PL, copy, env, ["b.x", "a.y"])
    assert view.data_sha256 == hashlib.sha256(copy).digest()
    assert view.withheld == ("a.y", "b.x")
    assert view.fields == tuple(present_fields(env))
    assert (view.recipient, view.rule) == (f.PL, RULE_PL)


def test_backlog_read_is_a_consultation_by_the_agency() -> None:
    """A session open: CONSULTATION by the agency (no operator), backlog count and session in detail."""
    r = backlog_read(Caller(f.PL, CERT), AT, 12, "s-42")
    assert r.action == audit_pb2.ACTION_CONSULTATION
    assert r.actor == audit_pb2.Actor(agency_id=f.PL, certificate_sha256=CERT)
    assert r.at == ts(AT)
    assert r.detail == "delivery session s-42 opened; backlog 12"
    assert r.why.law == BACKLOG_WHY
    assert (r.recipient, r.distribution_id) == ("", "")


def test_hub_record_is_by_the_hub() -> None:
    r = hub_record(audit_pb2.ACTION_ERASURE, AT, "purged 1-4")
    assert r.action == audit_pb2.ACTION_ERASURE
    assert r.actor == audit_pb2.Actor(agency_id=HUB)
    assert HUB == "hub"
    assert (r.detail, r.at) == ("purged 1-4", ts(AT))


def test_withheld_names_the_caller_locations_the_redaction_removed() -> None:
    """PL (no caller grant) loses the Caller locations: its disclosure record must say something was withheld there."""
    env = f.envelope()
    env.incident.locations.append(
        common_pb2.Location(type="Caller", point=common_pb2.GeoPoint(latitude=45.3, longitude=9.5))
    )
    to_pl = publish_records(env, CALLER, b"", views_of(env), AT)[2]
    assert to_pl.recipient == f.PL
    assert len(redact(env, mask_for((), ())).incident.locations) == 1  # the Caller location was removed
    assert "incident.locations[type=Caller]" in to_pl.withheld, list(to_pl.withheld)
    to_ps = publish_records(env, CALLER, b"", views_of(env), AT)[1]
    assert "incident.locations[type=Caller]" not in to_ps.withheld  # the Questura has the caller grant


def test_a_disclosure_records_the_format_the_recipient_receives_in() -> None:
    env = f.envelope(sent=f.NOW)
    digest = hashlib.sha256(env.SerializeToString()).digest()
    views = [v._replace(format="eido") if v.recipient == f.QUESTURA else v for v in views_of(env)]
    records = publish_records(env, CALLER, digest, views, AT)
    formats = {r.recipient: r.format for r in records if r.action == audit_pb2.ACTION_DISCLOSURE}
    assert formats == {f.QUESTURA: "eido", f.PL: "grpc"}


def test_copies_take_each_recipients_format_from_the_config() -> None:
    env = f.envelope(sent=f.NOW)
    data = env.SerializeToString()
    copies = Copies(env, data, hashlib.sha256(data).digest(), audited=True, formats={f.QUESTURA: "nue112"})
    for agency in (f.QUESTURA, f.PL):
        copies.of(Route(agency_id=agency, rule="r"))
    assert [(v.recipient, v.format) for v in copies.views] == [(f.QUESTURA, "nue112"), (f.PL, "grpc")]
