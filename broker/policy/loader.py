"""Reading agreement files (YAML) into checked Agreements; every problem names the file, the line and the field.

A file is checked against the published JSON Schema (deploy/agreements/agreement.schema.json,
shipped as broker/data/agreement.schema.json) and then against the real code lists and its own
consistency: EIDO incident types, ISTAT comuni, provinces and regions, roles and agencies that
are parties, ids that repeat, hide paths that name envelope fields, no personal data for the
Prefettura. A set of files loads whole or not at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, time
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from broker.policy import redact
from broker.policy.model import (
    PREFETTURA,
    PREFETTURA_PREFIX,
    WEEKDAYS,
    Agreement,
    AgreementSet,
    Party,
    RoleView,
    Rule,
    Schedule,
    Territory,
)
from broker.validate import codelists

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with an agreement file."""

    source: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        """source:line: field: message."""
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}:{self.line}: {where}{self.message}"


class AgreementsInvalid(Exception):
    """Raised when an agreement file or set is wrong; lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        """From the problems, sorted by file and line."""
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@functools.cache
def schema() -> dict[str, Any]:
    """The published JSON Schema of an agreement file."""
    text = (resources.files("broker") / "data" / "agreement.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _field(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Located:
    """A parsed YAML document with the line of every node."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}
        self.key_lines: dict[Path_, int] = {}  # the line of each mapping key
        self.repeated: list[Problem] = []
        self._timestamps: list[tuple[int, str]] = []
        loader: yaml.SafeLoader | None = None
        try:
            loader = yaml.SafeLoader(text)
            node = loader.get_single_node()
            if node is None:
                raise AgreementsInvalid([Problem(source, 1, "", "the file is empty")])
            self._walk(node, ())
            self.data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise AgreementsInvalid([Problem(source, line, "", f"not valid YAML: {exc.problem}")]) from exc
        except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
            mark = getattr(exc, "line", None)
            line = int(mark) + 1 if isinstance(mark, int) else 1
            raise AgreementsInvalid([Problem(source, line, "", f"not valid YAML: {exc}")]) from exc
        except ValueError as exc:  # a value YAML recognises but cannot build, e.g. the date 2025-02-30
            raise AgreementsInvalid([Problem(source, self._bad_date_line(), "", f"not a valid value: {exc}")]) from exc
        finally:
            if loader is not None:
                loader.dispose()
        if self.repeated:
            raise AgreementsInvalid(self.repeated)

    def _bad_date_line(self) -> int:
        """The line of the first timestamp that does not make a date (or 1)."""
        for line, value in self._timestamps:
            try:
                date.fromisoformat(value[:10])
            except ValueError:
                return line
        return 1

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":timestamp"):
            self._timestamps.append((node.start_mark.line + 1, str(node.value)))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                if name in seen:
                    self.repeated.append(
                        Problem(self.source, key.start_mark.line + 1, _field((*path, name)), "the key repeats")
                    )
                seen.add(name)
                self.key_lines[(*path, name)] = key.start_mark.line + 1
                self._walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line(self, path: Path_) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def problem(self, path: Path_, message: str) -> Problem:
        return Problem(self.source, self.line(path), _field(path), message)


def _territory(raw: Mapping[str, Any] | None) -> Territory:
    raw = raw or {}
    return Territory(
        frozenset(raw.get("comuni", ())), frozenset(raw.get("provinces", ())), frozenset(raw.get("regions", ()))
    )


def _hhmm(value: str | None) -> time | None:
    if value is None:
        return None
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


class _Checker:
    """Semantic checks of one schema-valid document; collects problems."""

    def __init__(self, doc: _Located) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data
        self.problems: list[Problem] = []
        self.codes = codelists.load()

    def fail(self, path: Path_, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def territory(self, raw: Mapping[str, Any] | None, path: Path_) -> None:
        if not raw:
            return
        for key, known, what in (
            ("comuni", self.codes.comuni, "an ISTAT comune"),
            ("provinces", self.codes.provinces, "an ISTAT province (historic three-digit code)"),
            ("regions", self.codes.regions, "an ISTAT region"),
        ):
            for i, code in enumerate(raw.get(key, ())):
                if code not in known:
                    self.fail((*path, key, i), f"{code!r} is not {what}")

    def run(self) -> None:
        data = self.data
        if data.get("valid_until") and str(data["valid_until"]) < str(data["valid_from"]):
            self.fail(("valid_until",), "is before valid_from")
        self.territory(data.get("territory"), ("territory",))
        roles_used, agencies = self.parties()
        self.roles(roles_used)
        seen: set[str] = set()
        for i, rule in enumerate(data["rules"]):
            self.rule(rule, ("rules", i), roles_used, agencies)
            if rule["id"] in seen:
                self.fail(("rules", i, "id"), f"rule id {rule['id']} repeats")
            seen.add(rule["id"])

    def parties(self) -> tuple[set[str], set[str]]:
        roles_used: set[str] = set()
        agencies: set[str] = set()
        for i, party in enumerate(self.data["parties"]):
            if party["agency"] in agencies:
                self.fail(("parties", i, "agency"), f"{party['agency']} is a party twice")
            if party["agency"].startswith(PREFETTURA_PREFIX) and party["role"] != PREFETTURA:
                self.fail(("parties", i, "role"), "a Prefettura (it.pref.*) takes the role prefettura")
            agencies.add(party["agency"])
            roles_used.add(party["role"])
            self.territory(party.get("covers"), ("parties", i, "covers"))
        return roles_used, agencies

    def roles(self, roles_used: set[str]) -> None:
        for role, view in (self.data.get("roles") or {}).items():
            if role not in roles_used:
                self.fail(("roles", role), f"no party has the role {role}")
            if role == PREFETTURA and view.get("personal_data"):
                self.fail(("roles", role, "personal_data"), "the prefettura receives no personal data")
            for j, path in enumerate(view.get("hide", ())):
                try:
                    redact.check_path(path)
                except redact.PathError as exc:
                    self.fail(("roles", role, "hide", j), str(exc))

    def escalation(self, rule: Mapping[str, Any], path: Path_, agencies: set[str]) -> None:
        escalate = rule.get("escalate")
        if not escalate:
            return
        to = escalate["to"]
        holders = [p["agency"] for p in self.data["parties"] if p["role"] == to]
        if "." in to and to not in agencies:
            self.fail((*path, "escalate", "to"), f"{to} is not a party of this agreement")
        elif "." not in to and len(holders) != 1:
            self.fail(
                (*path, "escalate", "to"), f"the role {to} must be held by exactly one party (it has {len(holders)})"
            )
        kinds = set(rule["kinds"])
        if "REQUEST" not in kinds:
            self.fail((*path, "escalate"), "only requests escalate: the rule's kinds must include REQUEST")

    def rule(self, rule: Mapping[str, Any], path: Path_, roles: set[str], agencies: set[str]) -> None:
        for key in ("from", "to"):
            for j, who in enumerate(rule[key]):
                if "." in who and who not in agencies:
                    self.fail((*path, key, j), f"{who} is not a party of this agreement")
                elif "." not in who and who not in roles:
                    self.fail((*path, key, j), f"no party has the role {who}")
        for j, code in enumerate(rule.get("incident_types", ())):
            if code not in self.codes.eido_incident_types:
                self.fail((*path, "incident_types", j), f"{code!r} is not in the EIDO incident-type-common registry")
        self.territory(rule.get("territory"), (*path, "territory"))
        self.escalation(rule, path, agencies)
        schedule = rule.get("schedule") or {}
        if ("from" in schedule) != ("to" in schedule):
            self.fail((*path, "schedule"), "needs both from and to, or neither")
        elif "from" in schedule and schedule["from"] == schedule["to"]:
            self.fail((*path, "schedule", "to"), "equals from: the window would be empty")


def _resolve(who: Iterable[str], parties: Sequence[Party]) -> frozenset[str]:
    out: set[str] = set()
    for name in who:
        if "." in name:
            out.add(name)
        else:
            out.update(p.agency for p in parties if p.role == name)
    return frozenset(out)


def _build(data: Mapping[str, Any], source: str, id_line: int = 1) -> Agreement:
    parties = tuple(
        Party(
            agency=p["agency"],
            role=p["role"],
            name=p.get("name", ""),
            covers=_territory(p.get("covers")),
            drills=bool(p.get("drills", False)),
        )
        for p in data["parties"]
    )
    rules = []
    for r in data["rules"]:
        schedule = None
        if r.get("schedule"):
            s = r["schedule"]
            schedule = Schedule(
                months=frozenset(s.get("months", ())),
                weekdays=frozenset(WEEKDAYS.index(d) for d in s.get("weekdays", ())),
                start=_hhmm(s.get("from")),
                end=_hhmm(s.get("to")),
            )
        rules.append(
            Rule(
                id=r["id"],
                senders=_resolve(r["from"], parties),
                recipients=_resolve(r["to"], parties),
                kinds=frozenset(r["kinds"]),
                payloads=frozenset(r.get("payloads", ())),
                incident_types=frozenset(r.get("incident_types", ())),
                alert_categories=frozenset(r.get("alert_categories", ())),
                min_priority=r.get("min_priority", ""),
                select=r.get("select", "explicit"),
                territory=_territory(r.get("territory")),
                schedule=schedule,
                description=r.get("description", ""),
                escalate_after=int(r["escalate"]["after_seconds"]) if r.get("escalate") else 0,
                escalate_to=min(_resolve([r["escalate"]["to"]], parties), default="") if r.get("escalate") else "",
                expire_after=int(r.get("expire_after_seconds", 0)),
            )
        )
    until = data.get("valid_until")
    return Agreement(
        id=data["id"],
        title=data["title"],
        source=source,
        valid_from=date.fromisoformat(str(data["valid_from"])),
        valid_until=date.fromisoformat(str(until)) if until else None,
        law=data["legal_basis"]["law"],
        purposes=frozenset(data["legal_basis"]["purposes"]),
        territory=_territory(data["territory"]),
        parties=parties,
        roles={
            role: RoleView(frozenset(v.get("personal_data", ())), frozenset(v.get("hide", ())))
            for role, v in (data.get("roles") or {}).items()
        },
        rules=tuple(rules),
        kind=data.get("kind", "patto"),
        id_line=id_line,
    )


def parse(text: str, source: str) -> Agreement:
    """One agreement from YAML text; raises AgreementsInvalid naming file, line and field."""
    doc = _Located(text, source)
    data = doc.data
    if isinstance(data, dict):
        for key in ("valid_from", "valid_until", "signed_on"):
            if isinstance(data.get(key), date):
                data[key] = data[key].isoformat()  # YAML reads dates as dates; the schema wants strings
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for key in sorted(k for k in error.instance if k not in allowed):
                line = doc.key_lines.get((*path, key), doc.line(path))
                problems.append(Problem(source, line, _field((*path, key)), "unknown field"))
            continue
        problems.append(doc.problem(path, _schema_message(error)))
    if problems:
        raise AgreementsInvalid(problems)
    checker = _Checker(doc)
    checker.run()
    if checker.problems:
        raise AgreementsInvalid(checker.problems)
    return _build(data, source, doc.key_lines.get(("id",), 1))


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"unknown field: {error.message.split('(')[-1].rstrip(')')}"
    if error.validator == "enum":
        return f"must be one of {', '.join(str(v) for v in error.validator_value)}"  # type: ignore[union-attr]
    if error.validator == "anyOf":
        return "must be a role or the agency id of a party"
    message: str = error.message
    return message


def load_set(paths: Iterable[Path]) -> AgreementSet:
    """Every agreement in these files, checked as a set (ids unique); raises AgreementsInvalid."""
    problems: list[Problem] = []
    agreements: list[Agreement] = []
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), 1, "", f"cannot read: {exc}"))
            continue
        digest.update(path.name.encode() + b"\0" + text.encode())
        try:
            agreements.append(parse(text, str(path)))
        except AgreementsInvalid as exc:
            problems.extend(exc.problems)
    ids: dict[str, str] = {}
    for agreement in agreements:
        if agreement.id in ids:
            problems.append(
                Problem(
                    agreement.source, agreement.id_line, "id", f"{agreement.id} is also the id in {ids[agreement.id]}"
                )
            )
        ids.setdefault(agreement.id, agreement.source)
    if not problems and not agreements:
        problems.append(
            Problem("(folder)", 1, "", "no agreement files: a hub with [agreements] routes by at least one")
        )
    if problems:
        raise AgreementsInvalid(problems)
    return AgreementSet(tuple(sorted(agreements, key=lambda a: a.id)), digest.hexdigest())


def agreement_files(folder: Path) -> list[Path]:
    """The agreement files of a folder: *.yaml and *.yml, not hidden."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))


def load_dir(folder: Path) -> AgreementSet:
    """Every agreement file of a folder, as one set; raises AgreementsInvalid."""
    if not folder.is_dir():
        raise AgreementsInvalid([Problem(str(folder), 1, "", "not a folder")])
    return load_set(agreement_files(folder))
