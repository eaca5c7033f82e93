"""Agreement files: the shipped examples load, and every bad file is refused naming file, line, field and problem."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import pytest

from broker.policy.loader import AgreementsInvalid, Problem, load_dir, load_set, parse
from broker.policy.model import Schedule, Territory

AGREEMENTS = Path(__file__).resolve().parents[2] / "deploy" / "agreements"

# A small valid agreement; each test breaks one thing in it. Flow style keeps a key and its value on one line.
VALID = """\
# A small agreement for the tests.
id: test-lodi
title: Accordo di prova
kind: patto
valid_from: 2025-01-01
valid_until: 2027-12-31
legal_basis:
  law: "d.l. 14/2017 art. 2"
  purposes: [PUBLIC_SECURITY, TRAINING]
territory:
  provinces: ["098"]
parties:
  - agency: it.pl.098031
    role: polizia_locale
    covers: {comuni: ["098031"]}
    drills: true
  - agency: it.ps.questura.lo
    role: questura
    drills: true
  - agency: it.cc.cp.lo
    role: carabinieri
  - agency: it.pref.lo
    role: prefettura
roles:
  questura: {personal_data: [caller, persons]}
  prefettura: {personal_data: [], hide: [incident.locations.point]}
rules:
  - id: local-to-state
    from: [polizia_locale]
    to: [questura, carabinieri]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
  - id: night
    from: [it.pl.098031]
    to: [questura, it.cc.cp.lo]
    kinds: [REPORT]
    incident_types: [FIGHT, NOISE]
    select: territory
    territory: {comuni: ["098031"]}
    schedule: {months: [6, 7], weekdays: [fri, sat], from: "21:00", to: "05:00"}
"""


def mutate(old: str, new: str, text: str = VALID) -> str:
    """The text with its only occurrence of old replaced by new."""
    assert 1 == text.count(old), old
    return text.replace(old, new)


def line_of(fragment: str, text: str) -> int:
    """The 1-based line where fragment (found once) starts."""
    assert 1 == text.count(fragment), fragment
    return text[: text.index(fragment)].count("\n") + 1


def last_line_of(fragment: str, text: str) -> int:
    """The 1-based line where the last occurrence of fragment starts."""
    return text[: text.rindex(fragment)].count("\n") + 1


def problems(text: str, source: str = "x.yaml") -> list[Problem]:
    """The problems parse reports for text (fails if it parses)."""
    with pytest.raises(AgreementsInvalid) as caught:
        parse(text, source)
    assert caught.value.problems, "AgreementsInvalid without problems"
    return caught.value.problems


def only(text: str) -> Problem:
    """The single problem parse reports for text."""
    found = problems(text)
    assert 1 == len(found), found
    return found[0]


# -- the shipped agreements ---------------------------------------------------------------------------------------


def test_shipped_agreements_load_with_their_ids() -> None:
    """Both files of deploy/agreements load as one set, sorted by id, with a digest."""
    loaded = load_dir(AGREEMENTS)
    assert ("patto-lodi-2025", "torino-112-sicurezza-integrata") == tuple(a.id for a in loaded.agreements)
    assert 64 == len(loaded.digest)


def test_torino_agreement_parties_and_rules() -> None:
    """The Torino protocol has its four parties and five rules, with roles resolved to agency ids."""
    torino = next(a for a in load_dir(AGREEMENTS).agreements if a.id == "torino-112-sicurezza-integrata")
    assert ("it.nue.cur.to", "it.pl.001272", "it.ps.questura.to", "it.cc.cp.to") == tuple(
        p.agency for p in torino.parties
    )
    assert (
        "contact-cards",
        "urgent-incidents-to-local-police",
        "incidents-between-rooms",
        "backup-and-hand-over",
        "plate-and-camera-alerts",
    ) == tuple(r.id for r in torino.rules)
    cards = torino.rules[0]
    assert frozenset({"it.nue.cur.to"}) == cards.senders
    assert frozenset({"it.ps.questura.to", "it.cc.cp.to", "it.pl.001272"}) == cards.recipients
    assert "protocollo" == torino.kind
    assert date(2026, 1, 15) == torino.valid_from
    assert torino.valid_until is None
    assert Territory(provinces=frozenset({"001"})) == torino.territory
    assert Territory(comuni=frozenset({"001272"})) == torino.party("it.pl.001272").covers
    assert (
        frozenset({"caller", "persons", "vehicles", "free_text", "media"})
        == torino.view_of("it.pl.001272").personal_data
    )
    assert all(p.drills for p in torino.parties)


def test_lodi_agreement_parties_and_rules() -> None:
    """The Lodi patto has ten parties, its seven rules, the night-venue schedule and the prefettura's view."""
    lodi = next(a for a in load_dir(AGREEMENTS).agreements if a.id == "patto-lodi-2025")
    assert 10 == len(lodi.parties)
    assert (
        "local-police-to-state-rooms",
        "state-rooms-to-local-police",
        "backup-requests",
        "video-and-plate-alerts",
        "counterfeiting-and-commercial-abuse",
        "summer-night-venues",
        "road-safety-to-prefettura",
    ) == tuple(r.id for r in lodi.rules)
    night = lodi.rules[5]
    assert Schedule(frozenset({6, 7, 8, 9}), frozenset({4, 5, 6}), time(21, 0), time(5, 0)) == night.schedule
    assert "territory" == night.select
    assert frozenset({"it.pl.098031", "it.pl.098010", "it.pl.098019", "it.pl.098032", "it.pl.098050"}) == night.senders
    assert frozenset({"it.ps.questura.lo", "it.cc.cp.lo"}) == night.recipients
    assert frozenset({"it.pref.lo"}) == lodi.rules[6].recipients
    assert date(2027, 6, 9) == lodi.valid_until
    assert frozenset() == lodi.view_of("it.pref.lo").personal_data
    assert "incident.call" in lodi.view_of("it.pref.lo").hide


def test_small_agreement_parses() -> None:
    """The test's own agreement is valid and becomes the expected rules."""
    agreement = parse(VALID, "x.yaml")
    assert "x.yaml" == agreement.source
    assert frozenset({"PUBLIC_SECURITY", "TRAINING"}) == agreement.purposes
    night = agreement.rules[1]
    assert frozenset({"it.ps.questura.lo", "it.cc.cp.lo"}) == night.recipients
    assert frozenset({"FIGHT", "NOISE"}) == night.incident_types
    assert frozenset({6, 7}) == night.schedule.months
    assert frozenset({4, 5}) == night.schedule.weekdays  # Friday and Saturday, Monday = 0
    assert frozenset({"it.pl.098031", "it.ps.questura.lo"}) == frozenset(
        p.agency for p in agreement.parties if p.drills
    )


# -- one problem each ---------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line() -> None:
    """A YAML syntax error is reported with the file and the line of the error."""
    text = mutate("title: Accordo di prova", "title: Accordo: di prova")
    problem = only(text)
    assert ("x.yaml", line_of("title:", text), "") == (problem.source, problem.line, problem.field)
    assert problem.message.startswith("not valid YAML")


def test_empty_file_is_refused() -> None:
    """An empty file is an error, not an empty agreement."""
    assert Problem("x.yaml", 1, "", "the file is empty") == only("# nothing here\n")


def test_unknown_top_level_field_is_named() -> None:
    """An unknown top-level field is refused and the message names it."""
    problem = only(mutate("kind: patto\n", "kind: patto\npriority: high\n"))
    assert ("x.yaml", "priority", "unknown field") == (problem.source, problem.field, problem.message)


def test_unknown_top_level_field_names_its_line() -> None:
    """An unknown top-level field is reported at its own line."""
    text = mutate("kind: patto\n", "kind: patto\npriority: high\n")
    assert line_of("priority:", text) == only(text).line


def test_missing_required_field() -> None:
    """A missing required field is reported at the mapping that lacks it."""
    text = mutate("    kinds: [REPORT]\n", "")
    problem = only(text)
    assert ("x.yaml", line_of("  - id: night", text), "rules[1]") == (problem.source, problem.line, problem.field)
    assert "'kinds' is a required property" == problem.message


def test_bad_enum_kind() -> None:
    """A kind outside the enum names the line, the element and the allowed values."""
    text = mutate("kinds: [REPORT]", "kinds: [REPORTT]")
    problem = only(text)
    assert ("x.yaml", line_of("kinds: [REPORTT]", text), "rules[1].kinds[0]") == (
        problem.source,
        problem.line,
        problem.field,
    )
    assert "must be one of REPORT, UPDATE, CANCEL, REQUEST, RESPONSE, ACK, ERROR" == problem.message


def test_bad_agency_id_pattern() -> None:
    """A party's agency id that does not match the agency pattern is refused."""
    text = mutate("  - agency: it.cc.cp.lo", "  - agency: IT.CC")
    problem = only(text)
    assert ("x.yaml", line_of("agency: IT.CC", text), "parties[2].agency") == (
        problem.source,
        problem.line,
        problem.field,
    )
    assert "'IT.CC' does not match" in problem.message


def test_bad_who_entry() -> None:
    """A from/to entry that is neither a role nor an agency id is refused."""
    text = mutate("from: [it.pl.098031]", "from: [Vigili]")
    problem = only(text)
    assert (line_of("from: [Vigili]", text), "rules[1].from[0]", "must be a role or the agency id of a party") == (
        problem.line,
        problem.field,
        problem.message,
    )


def test_incident_type_not_in_eido_registry() -> None:
    """An incident type outside the EIDO registry names the rule and the element."""
    text = mutate("incident_types: [FIGHT, NOISE]", "incident_types: [FIGHT, NOTATYPE]")
    problem = only(text)
    assert (
        Problem(
            "x.yaml",
            line_of("NOTATYPE", text),
            "rules[1].incident_types[1]",
            "'NOTATYPE' is not in the EIDO incident-type-common registry",
        )
        == problem
    )


def test_unknown_istat_codes() -> None:
    """Unknown ISTAT comune, province and region codes are each reported."""
    text = mutate(
        'territory:\n  provinces: ["098"]',
        'territory:\n  comuni: ["999999"]\n  provinces: ["999"]\n  regions: ["42"]',
    )
    assert [
        Problem("x.yaml", line_of('["999999"]', text), "territory.comuni[0]", "'999999' is not an ISTAT comune"),
        Problem(
            "x.yaml",
            line_of('["999"]', text),
            "territory.provinces[0]",
            "'999' is not an ISTAT province (historic three-digit code)",
        ),
        Problem("x.yaml", line_of('["42"]', text), "territory.regions[0]", "'42' is not an ISTAT region"),
    ] == problems(text)


def test_unknown_comune_in_covers_and_rule_territory() -> None:
    """A party's covers and a rule's territory are checked against ISTAT too."""
    text = mutate('covers: {comuni: ["098031"]}', 'covers: {comuni: ["098999"]}')
    text = mutate('territory: {comuni: ["098031"]}', 'territory: {provinces: ["000"]}', text)
    assert [
        ("parties[0].covers.comuni[0]", line_of("098999", text)),
        ("rules[1].territory.provinces[0]", line_of('"000"', text)),
    ] == [(p.field, p.line) for p in problems(text)]


def test_role_in_rule_that_no_party_has() -> None:
    """A role in from/to that no party has is refused."""
    text = mutate("to: [questura, carabinieri]", "to: [questura, guardia_di_finanza]")
    assert Problem(
        "x.yaml", line_of("guardia_di_finanza", text), "rules[0].to[1]", "no party has the role guardia_di_finanza"
    ) == only(text)


def test_agency_in_rule_that_is_not_a_party() -> None:
    """An agency id in from/to that is not a party is refused."""
    text = mutate("to: [questura, it.cc.cp.lo]", "to: [questura, it.gdf.cp.lo]")
    assert Problem(
        "x.yaml", line_of("it.gdf.cp.lo", text), "rules[1].to[1]", "it.gdf.cp.lo is not a party of this agreement"
    ) == only(text)


def test_duplicate_party() -> None:
    """The same agency twice among the parties is refused at the second one."""
    text = mutate("    role: prefettura\n", "    role: prefettura\n  - agency: it.ps.questura.lo\n    role: questura\n")
    assert Problem(
        "x.yaml", last_line_of("it.ps.questura.lo", text), "parties[4].agency", "it.ps.questura.lo is a party twice"
    ) == only(text)


def test_duplicate_rule_id() -> None:
    """Two rules with the same id are refused at the second."""
    text = mutate("  - id: night", "  - id: local-to-state")
    assert Problem(
        "x.yaml", last_line_of("id: local-to-state", text), "rules[1].id", "rule id local-to-state repeats"
    ) == only(text)


def test_valid_until_before_valid_from() -> None:
    """An agreement that ends before it starts is refused."""
    text = mutate("valid_until: 2027-12-31", "valid_until: 2024-12-31")
    assert Problem("x.yaml", line_of("valid_until", text), "valid_until", "is before valid_from") == only(text)


def test_invalid_date_string() -> None:
    """A quoted date that is not a calendar date is refused by the schema."""
    text = mutate("valid_until: 2027-12-31", 'valid_until: "31/12/2027"')
    problem = only(text)
    assert (line_of("valid_until", text), "valid_until") == (problem.line, problem.field)


def test_impossible_unquoted_date_is_a_problem() -> None:
    """An unquoted impossible date is an AgreementsInvalid naming the line, not a crash."""
    text = mutate("valid_from: 2025-01-01", "valid_from: 2025-02-30")
    assert line_of("valid_from", text) == only(text).line


def test_control_character_is_a_problem() -> None:
    """A file with a control character (here BEL) is an AgreementsInvalid, not a crash."""
    text = mutate("title: Accordo di prova", "title: Accordo\x07 di prova")
    assert "x.yaml" == only(text).source


def test_duplicate_key_is_a_problem() -> None:
    """A key given twice in a mapping is refused at its second occurrence."""
    text = mutate("    to: [questura, carabinieri]\n", "    to: [questura, carabinieri]\n    to: [questura]\n")
    assert last_line_of("to: [questura]", text) == only(text).line


def test_prefettura_gets_no_personal_data() -> None:
    """Granting any personal data to the prefettura role is refused."""
    text = mutate("prefettura: {personal_data: []", "prefettura: {personal_data: [staff]")
    assert Problem(
        "x.yaml",
        line_of("prefettura: {", text),
        "roles.prefettura.personal_data",
        "the prefettura receives no personal data",
    ) == only(text)


def test_hide_path_that_is_not_an_envelope_field() -> None:
    """A hide path naming no envelope field is refused with the field it lacks."""
    text = mutate("hide: [incident.locations.point]", "hide: [incident.locations.altitude]")
    assert Problem(
        "x.yaml",
        line_of("altitude", text),
        "roles.prefettura.hide[0]",
        "incident.locations.altitude: no field altitude in opsroom.common.v1.Location",
    ) == only(text)


def test_hide_path_on_protected_header_field() -> None:
    """A hide path on a header field (sender) is refused."""
    text = mutate("hide: [incident.locations.point]", "hide: [incident.locations.point, sender]")
    assert Problem(
        "x.yaml",
        line_of("sender]", text),
        "roles.prefettura.hide[1]",
        "sender is part of the envelope's header and cannot be hidden",
    ) == only(text)


def test_schedule_from_without_to() -> None:
    """A schedule with a start and no end is refused."""
    text = mutate('from: "21:00", to: "05:00"', 'from: "21:00"')
    assert Problem(
        "x.yaml", line_of("schedule:", text), "rules[1].schedule", "needs both from and to, or neither"
    ) == only(text)


def test_schedule_time_pattern() -> None:
    """A schedule time that is not HH:MM is refused."""
    text = mutate('to: "05:00"', 'to: "25:00"')
    problem = only(text)
    assert (line_of("schedule:", text), "rules[1].schedule.to") == (problem.line, problem.field)


def test_roles_entry_for_role_no_party_has() -> None:
    """A roles entry for a role that no party has is refused."""
    text = mutate("  questura: {personal_data", "  comune: {personal_data")
    assert Problem("x.yaml", line_of("comune:", text), "roles.comune", "no party has the role comune") == only(text)


def test_every_problem_is_reported_sorted_by_line() -> None:
    """Several semantic problems in one file are all reported, in line order, and the message lists them."""
    text = mutate("valid_until: 2027-12-31", "valid_until: 2024-12-31")
    text = mutate("incident_types: [FIGHT, NOISE]", "incident_types: [NOTATYPE]", text)
    with pytest.raises(AgreementsInvalid) as caught:
        parse(text, "x.yaml")
    assert [line_of("valid_until", text), line_of("NOTATYPE", text)] == [p.line for p in caught.value.problems]
    assert (
        f"x.yaml:{line_of('valid_until', text)}: valid_until: is before valid_from" == str(caught.value).splitlines()[0]
    )


# -- sets of files ------------------------------------------------------------------------------------------------


def test_load_set_reports_duplicate_agreement_id(tmp_path: Path) -> None:
    """Two files with the same agreement id are refused, the second naming the first."""
    (tmp_path / "a.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(VALID, encoding="utf-8")
    with pytest.raises(AgreementsInvalid) as caught:
        load_set([tmp_path / "b.yaml", tmp_path / "a.yaml"])
    [problem] = caught.value.problems
    assert (str(tmp_path / "b.yaml"), "id") == (problem.source, problem.field)
    assert f"test-lodi is also the id in {tmp_path / 'a.yaml'}" == problem.message


def test_duplicate_agreement_id_names_its_line(tmp_path: Path) -> None:
    """The duplicate-id problem points at the id's line (line 2 here, after a comment)."""
    (tmp_path / "a.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(VALID, encoding="utf-8")
    with pytest.raises(AgreementsInvalid) as caught:
        load_set([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert [line_of("id: test-lodi", VALID)] == [p.line for p in caught.value.problems]


def test_load_set_collects_problems_of_every_file(tmp_path: Path) -> None:
    """A set with a bad file is refused whole, with the problems of each file under its name."""
    (tmp_path / "good.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "bad1.yaml").write_text(mutate("kinds: [REPORT]", "kinds: [REPORTT]"), encoding="utf-8")
    (tmp_path / "bad2.yaml").write_text("id: [", encoding="utf-8")
    with pytest.raises(AgreementsInvalid) as caught:
        load_dir(tmp_path)
    assert [str(tmp_path / "bad1.yaml"), str(tmp_path / "bad2.yaml")] == [p.source for p in caught.value.problems]


def test_file_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused as unreadable, naming the file."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("Accordo di prova", "Perché è così").encode("latin-1"))
    with pytest.raises(AgreementsInvalid) as caught:
        load_set([path])
    [problem] = caught.value.problems
    assert (str(path), 1, "") == (problem.source, problem.line, problem.field)
    assert problem.message.startswith("cannot read:")


def test_file_not_readable(tmp_path: Path) -> None:
    """An agreement 'file' that cannot be read (a folder named *.yaml) is refused, naming it."""
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(AgreementsInvalid) as caught:
        load_dir(tmp_path)
    [problem] = caught.value.problems
    assert (str(tmp_path / "folder.yaml"), 1) == (problem.source, problem.line)
    assert problem.message.startswith("cannot read:")


def test_load_dir_of_missing_folder(tmp_path: Path) -> None:
    """A folder that does not exist is refused."""
    with pytest.raises(AgreementsInvalid) as caught:
        load_dir(tmp_path / "missing")
    assert [Problem(str(tmp_path / "missing"), 1, "", "not a folder")] == caught.value.problems


def test_load_dir_ignores_hidden_and_other_files(tmp_path: Path) -> None:
    """Only *.yaml and *.yml files that are not hidden are agreement files."""
    (tmp_path / "a.yml").write_text(VALID, encoding="utf-8")
    (tmp_path / ".b.yaml").write_text("broken: [", encoding="utf-8")
    (tmp_path / "README.md").write_text("not yaml: [", encoding="utf-8")
    assert ("test-lodi",) == tuple(a.id for a in load_dir(tmp_path).agreements)


# -- escalation and expiry ------------------------------------------------------------------------------------------

REQUESTS = """
  - id: backup
    from: [polizia_locale]
    to: [carabinieri]
    kinds: [REQUEST, CANCEL]
    payloads: [assistance_request]
    expire_after_seconds: 600
    escalate: {after_seconds: 120, to: questura}
"""


def test_escalation_and_expiry_of_a_rule() -> None:
    """escalate.to (a role held by one party) resolves to its agency; expire_after_seconds is kept; others default."""
    agreement = parse(VALID + REQUESTS, "x.yaml")
    backup = next(r for r in agreement.rules if r.id == "backup")
    assert (120, "it.ps.questura.lo", 600) == (backup.escalate_after, backup.escalate_to, backup.expire_after)
    other = agreement.rules[0]
    assert (0, "", 0) == (other.escalate_after, other.escalate_to, other.expire_after)
    torino = next(a for a in load_dir(AGREEMENTS).agreements if a.id == "torino-112-sicurezza-integrata")
    shipped = next(r for r in torino.rules if r.id == "backup-and-hand-over")
    assert (120, "it.ps.questura.to") == (shipped.escalate_after, shipped.escalate_to)


def test_escalation_needs_requests_and_one_alternate() -> None:
    """Only a rule of requests escalates, to a party (or a role exactly one party holds)."""
    not_requests = REQUESTS.replace("kinds: [REQUEST, CANCEL]", "kinds: [REPORT]").replace(
        "payloads: [assistance_request]", "payloads: [incident]"
    )
    assert "only requests escalate" in only(VALID + not_requests).message
    unknown = REQUESTS.replace("to: questura}", "to: it.ps.questura.mi}")
    assert "is not a party of this agreement" in only(VALID + unknown).message
    two_holders = mutate("    role: carabinieri\n", "    role: questura\n", VALID + REQUESTS)
    found = [p.message for p in problems(two_holders)]
    assert any("must be held by exactly one party (it has 2)" in m for m in found), found
