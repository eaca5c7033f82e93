"""The incident-type map between the standards' code lists (pure): EIDO ⇄ EMSI ⇄ CAP category.

The table adapters/data/incident-types.csv gives, for every value of the EIDO incident-type
registry (APCO ANS 2.103.2, the contract's IncidentType.eido_code), the EMSI
EVENT.ETYPE.CATEGORY code and the CAP category nearest to it. Going back from EMSI, the row
marked `emsi_preferred` names the EIDO code an EMSI category decodes to; an EMSI code without
one decodes to the EIDO code of its family's preferred row. Every code in the table is checked
against the registries the hub validates with (tests/adapters/test_codes.py).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from opsroom.alert.v1 import alert_pb2

from adapters.schemas import DATA


@dataclass(frozen=True)
class IncidentTypeRow:
    """One row of the map: an EIDO code and its EMSI and CAP counterparts."""

    eido: str
    emsi: str
    cap: alert_pb2.Category.ValueType
    emsi_preferred: bool


def cap_category(name: str) -> alert_pb2.Category.ValueType:
    """The Category enum value of a CAP category name ("Security" -> CATEGORY_SECURITY)."""
    return alert_pb2.Category.Value(f"CATEGORY_{name.upper()}")


def cap_category_name(value: alert_pb2.Category.ValueType) -> str:
    """The CAP spelling of a Category value (CATEGORY_CBRNE -> "CBRNE", CATEGORY_GEO -> "Geo")."""
    name = alert_pb2.Category.Name(value).removeprefix("CATEGORY_")
    return name if name == "CBRNE" else name.capitalize()


@cache
def rows() -> tuple[IncidentTypeRow, ...]:
    """The table, in file order."""
    with (DATA / "incident-types.csv").open(encoding="utf-8", newline="") as handle:
        return tuple(
            IncidentTypeRow(
                eido=row["eido_code"],
                emsi=row["emsi_category"],
                cap=cap_category(row["cap_category"]),
                emsi_preferred=row["emsi_preferred"] == "yes",
            )
            for row in csv.DictReader(handle)
        )


@cache
def by_eido() -> Mapping[str, IncidentTypeRow]:
    """EIDO code -> its row."""
    return {row.eido: row for row in rows()}


@cache
def eido_by_emsi() -> Mapping[str, str]:
    """EMSI category -> the EIDO code it decodes to (its preferred row, else its family's)."""
    preferred = {row.emsi: row.eido for row in rows() if row.emsi_preferred}
    families = {code.split("/")[0]: eido for code, eido in preferred.items() if "/" not in code}
    out = dict(preferred)
    for row in rows():
        family = row.emsi.split("/")[0]
        if row.emsi not in out and family in families:
            out[row.emsi] = families[family]
    return out


def emsi_for(eido_code: str) -> str | None:
    """The EMSI category of an EIDO incident type, or None when the code is not in the table."""
    row = by_eido().get(eido_code)
    return row.emsi if row else None


def eido_for(emsi_category: str) -> str | None:
    """The EIDO incident type an EMSI category decodes to, or None when the map has none."""
    found = eido_by_emsi().get(emsi_category)
    if found is None and "/" in emsi_category:
        found = eido_by_emsi().get(emsi_category.split("/", maxsplit=1)[0])
    return found


def cap_for(eido_code: str) -> alert_pb2.Category.ValueType | None:
    """The CAP category of an EIDO incident type, or None when the code is not in the table."""
    row = by_eido().get(eido_code)
    return row.cap if row else None
