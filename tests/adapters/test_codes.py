"""The incident-type map: every EIDO code has a row, every EMSI code decodes, the values exist, the spot checks hold."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
from opsroom.alert.v1 import alert_pb2

from adapters import codes
from adapters.schemas import DATA


def _csv(relative: str) -> list[dict[str, str]]:
    return list(csv.DictReader((DATA / relative).read_text(encoding="utf-8").splitlines()))


EIDO_CODES = [row["value"] for row in _csv("eido/registries/incident-type-common.csv")]
EMSI_CODES = [row["code"] for row in _csv("emsi/nomenclatures/EMSI-EVENT.ETYPE.CATEGORY.csv")]
EMSI_FAMILIES = ("ASB", "ASR", "EXP", "FIR", "FLD", "GND", "HLT", "POL", "PSW", "TRP")
CAP_CATEGORIES = ("Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport", "Infra", "CBRNE", "Other")  # fmt: skip


def test_the_registries_are_the_ones_expected() -> None:
    assert len(EIDO_CODES) == 247  # FVEH and MAYDAY are listed twice in the registry
    assert len(set(EIDO_CODES)) == 245
    assert set(EMSI_FAMILIES) <= set(EMSI_CODES)


def test_every_eido_code_has_exactly_one_row() -> None:
    counts = Counter(row.eido for row in codes.rows())
    assert sorted(counts) == sorted(set(EIDO_CODES))
    assert max(counts.values()) == 1


def test_every_value_exists_in_its_list() -> None:
    raw = _csv("incident-types.csv")
    assert {row["emsi_category"] for row in raw} <= set(EMSI_CODES)
    assert {row["cap_category"] for row in raw} <= set(CAP_CATEGORIES)
    assert {row["emsi_preferred"] for row in raw} <= {"yes", "no"}
    for row in codes.rows():
        assert codes.cap_category_name(row.cap) in CAP_CATEGORIES


def test_one_preferred_row_per_emsi_code_that_appears_and_every_family_has_one() -> None:
    preferred = Counter(row.emsi for row in codes.rows() if row.emsi_preferred)
    used = {row.emsi for row in codes.rows()}
    assert set(preferred) == used
    assert max(preferred.values()) == 1
    assert set(EMSI_FAMILIES) <= set(preferred)


@pytest.mark.parametrize("emsi", EMSI_CODES)
def test_every_emsi_code_decodes_to_a_registry_code_of_its_family(emsi: str) -> None:
    eido = codes.eido_for(emsi)
    assert eido in EIDO_CODES
    assert codes.emsi_for(eido).split("/")[0] == emsi.split("/", maxsplit=1)[0]  # type: ignore[union-attr]


def test_an_emsi_code_in_the_table_decodes_to_its_preferred_row() -> None:
    assert codes.eido_for("PSW/RIOT") == "FIGHT"
    assert codes.eido_for("TRP/COL") == "MVA"
    assert codes.eido_for("GND/AVL") == codes.eido_for("GND") == "HAZ"  # no row: the family's
    assert codes.eido_for("XYZ/ABC") is None


@pytest.mark.parametrize(
    ("eido", "emsi", "cap"),
    [
        ("VEHSTLN", "PSW", "Security"),
        ("FSTRU", "FIR", "Fire"),
        ("FAPT", "FIR", "Fire"),
        ("FBRUSH", "FIR/CLA", "Fire"),
        ("MVA", "TRP/COL", "Transport"),
        ("MVAINJY", "TRP/COL", "Transport"),
        ("THAZ", "TRP", "Transport"),
        ("CARDIAC", "HLT", "Health"),
        ("STROKE", "HLT", "Health"),
        ("PANDEMIC", "HLT/EPI", "Health"),
        ("HAZMAT", "POL", "CBRNE"),
        ("RADIAT", "POL/RAD", "CBRNE"),
        ("ROBBERY", "ASB", "Security"),
        ("ALRBA", "PSW/ALM", "Security"),
        ("PERMISS", "PSW/MIS", "Security"),
        ("BOMB", "PSW/PKG", "Security"),
        ("WATER", "ASR/WAT", "Rescue"),
        ("EXPLOS", "EXP", "Fire"),
        ("GASLEAK", "EXP/GAS", "Safety"),
    ],
)
def test_spot_checks(eido: str, emsi: str, cap: str) -> None:
    assert codes.emsi_for(eido) == emsi
    assert codes.cap_for(eido) == codes.cap_category(cap)


def test_unknown_codes_are_none() -> None:
    assert codes.emsi_for("NOPE") is None
    assert codes.cap_for("NOPE") is None
    assert codes.cap_category("CBRNE") == alert_pb2.CATEGORY_CBRNE
    assert codes.cap_category_name(alert_pb2.CATEGORY_GEO) == "Geo"


def test_the_table_is_the_file() -> None:
    assert len(codes.rows()) == len(_csv("incident-types.csv"))
