"""The real code lists the hub validates against: EIDO registries, EMSI categories and ISTAT territorial codes.

The files are copies of the project's reference standards (broker/data/*/SOURCES.md says where
each comes from); they are read once and held as frozen sets.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources


def _read(folder: str, name: str) -> str:
    return (resources.files("broker") / "data" / folder / name).read_text(encoding="utf-8")


def _column(folder: str, name: str, column: str, *, delimiter: str = ",") -> frozenset[str]:
    reader = csv.DictReader(io.StringIO(_read(folder, name)), delimiter=delimiter)
    return frozenset(row[column].strip() for row in reader if row[column].strip())


@dataclass(frozen=True, slots=True)
class Comune:
    """A comune of the ISTAT list."""

    istat_code: str
    name: str
    province_code: str
    region_code: str
    sigla: str


@dataclass(frozen=True)
class CodeLists:
    """Every code list the validation and the routing use."""

    eido_incident_types: frozenset[str]
    eido_agency_roles: frozenset[str]
    eido_person_roles: frozenset[str]
    eido_vehicle_relationships: frozenset[str]
    eido_location_types: frozenset[str]
    eido_disposition_codes: frozenset[str]
    eido_resource_types: frozenset[str]
    emsi_categories: frozenset[str]
    comuni: frozenset[str]
    provinces: frozenset[str]
    regions: frozenset[str]


def _comuni_current() -> dict[str, Comune]:
    """The current ISTAT list ("Elenco comuni italiani"), keyed by six-digit code."""
    reader = csv.reader(io.StringIO(_read("istat", "istat-elenco-comuni-italiani.csv")), delimiter=";")
    next(reader)  # header, with newlines inside cells
    out: dict[str, Comune] = {}
    for row in reader:
        code = row[4].strip()
        out[code] = Comune(code, row[6].strip(), row[2].strip(), row[0].strip(), row[14].strip())
    return out


def _comuni_2023() -> frozenset[str]:
    """Codes of the 2023 boundaries file, which positions resolve to (9 merged away since)."""
    return _column("istat", "comuni-2023-centroids-derived.csv", "istat_code")


@functools.cache
def comuni_by_code() -> dict[str, Comune]:
    """The current comuni by ISTAT code."""
    return _comuni_current()


@functools.cache
def load() -> CodeLists:
    """All code lists, read once."""
    current = comuni_by_code()
    comuni = frozenset(current) | _comuni_2023()
    provinces = frozenset(code[:3] for code in comuni)
    regions = frozenset(c.region_code for c in current.values())
    return CodeLists(
        eido_incident_types=_column("eido", "incident-type-common.csv", "value"),
        eido_agency_roles=_column("eido", "agency-role.csv", "value"),
        eido_person_roles=_column("eido", "person-role.csv", "value"),
        eido_vehicle_relationships=_column("eido", "vehicle-relationship-type.csv", "value"),
        eido_location_types=_column("eido", "location-type.csv", "value"),
        eido_disposition_codes=_column("eido", "common-disposition-code.csv", "value"),
        eido_resource_types=_column("eido", "emergency-resource-type-common.csv", "value"),
        emsi_categories=_column("emsi", "EMSI-EVENT.ETYPE.CATEGORY.csv", "code"),
        comuni=comuni,
        provinces=provinces,
        regions=regions,
    )
