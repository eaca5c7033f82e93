"""The agreement the fault tests route by, their agencies, and the incidents each sender reports (which rooms each reaches).

Three senders report incidents; three rooms receive them, two or three per event, each through
its role's view, so that an envelope is several different messages and a write cut between
them leaves a part stored:

| sender | incident | explicit recipients | added by the agreement | rooms |
|---|---|---|---|---|
| 112 CUR | fight in Torino | Questura, Carabinieri | | 2 |
| 112 CUR | fraud in Torino | Questura, Carabinieri | GdF (category) | 3 |
| PL Torino | fight in Moncalieri | Questura | Carabinieri (territory) | 2 |
| PL Torino | fraud in Torino | Questura | GdF (category) | 2 |
| PL Moncalieri | fraud in Moncalieri | Questura | Carabinieri (territory), GdF (category) | 3 |
| PL Moncalieri | fight in Moncalieri | Questura | Carabinieri (territory) | 2 |
| PL Torino, PL Moncalieri | plate read (bulk lane) | Questura, Carabinieri | | 2 |

The test knows these only to check the routing; what a room is owed comes from the hub's
acceptance of each publish (Acceptance.recipients).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.factories import agreement_head

CUR = "it.nue.cur.to"
PL = "it.pl.001272"
PL_MONCALIERI = "it.pl.001156"
QUESTURA = "it.ps.questura.to"
CC = "it.cc.cp.to"
GDF = "it.gdf.cp.to"
TORINO = "001272"
MONCALIERI = "001156"

SENDERS = {CUR: "112 NUE - CUR Torino", PL: "Polizia Locale di Torino", PL_MONCALIERI: "Polizia Locale di Moncalieri"}
ROOMS = {
    QUESTURA: "Questura di Torino",
    CC: "Carabinieri - Comando Provinciale di Torino",
    GDF: "Guardia di Finanza - Comando Provinciale di Torino",
}
AGREEMENT_ID = "fault-torino"

AGREEMENT = (
    agreement_head(AGREEMENT_ID, "Fault tests - Torino rooms, two or three recipients per event")
    + f"""\
parties:
  - {{agency: {CUR}, role: cur}}
  - {{agency: {PL}, role: polizia_locale, covers: {{comuni: ["{TORINO}"]}}}}
  - {{agency: {PL_MONCALIERI}, role: polizia_locale, covers: {{comuni: ["{MONCALIERI}"]}}}}
  - {{agency: {QUESTURA}, role: questura}}
  - {{agency: {CC}, role: carabinieri, covers: {{comuni: ["{MONCALIERI}"]}}}}
  - {{agency: {GDF}, role: guardia_di_finanza}}
roles:
  questura: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
  carabinieri: {{personal_data: [caller, persons, vehicles, free_text]}}
  guardia_di_finanza: {{personal_data: [persons, vehicles]}}
  cur: {{personal_data: []}}
  polizia_locale: {{personal_data: []}}
rules:
  - id: contact-cards
    from: [cur]
    to: [questura, carabinieri]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
  - id: local-police-reports
    from: [polizia_locale]
    to: [questura, carabinieri]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
    select: territory
  - id: plate-reads
    from: [polizia_locale]
    to: [questura, carabinieri]
    kinds: [REPORT]
    payloads: [alert]
  - id: frauds
    from: [cur, polizia_locale]
    to: [guardia_di_finanza]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
    incident_types: [FRAUD]
    select: territory
"""
)

# What each room's copy holds, as the room process writes it (tests/faults/room.py view_of):
# c caller, n network location, p persons, v vehicle plates, t free text, m media, s staff ids;
# an alert's view starts with "A:".
VIEWS = {QUESTURA: "cnpvtms", CC: "cpvt", GDF: "pv"}
ALERT_VIEWS = {QUESTURA: "A:vms", CC: "A:v"}
# Plate reads (bulk lane): who sends them, whom they name.
PLATE_SENDERS = (PL, PL_MONCALIERI)
PLATE_ROOMS = (QUESTURA, CC)


@dataclass(frozen=True)
class Case:
    """One kind of incident a sender reports: its EIDO type, its comune, whom it names, and the rooms it must reach."""

    eido_code: str
    comune: str
    named: tuple[str, ...]
    rooms: frozenset[str]


CASES: dict[str, tuple[Case, ...]] = {
    CUR: (
        Case("FIGHT", TORINO, (QUESTURA, CC), frozenset({QUESTURA, CC})),
        Case("FRAUD", TORINO, (QUESTURA, CC), frozenset({QUESTURA, CC, GDF})),
    ),
    PL: (
        Case("FIGHT", MONCALIERI, (QUESTURA,), frozenset({QUESTURA, CC})),
        Case("FRAUD", TORINO, (QUESTURA,), frozenset({QUESTURA, GDF})),
    ),
    PL_MONCALIERI: (
        Case("FRAUD", MONCALIERI, (QUESTURA,), frozenset({QUESTURA, CC, GDF})),
        Case("FIGHT", MONCALIERI, (QUESTURA,), frozenset({QUESTURA, CC})),
    ),
}


def case_of(sender: str, number: int) -> Case:
    """The kind of a sender's number-th incident (1, 2, ...): the sender's cases in turn."""
    cases = CASES[sender]
    return cases[(number - 1) % len(cases)]


def write_agreement(folder: Path) -> Path:
    """The agreement file in folder (created); returns the folder, for the hub config's [agreements]."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{AGREEMENT_ID}.yaml").write_text(AGREEMENT, encoding="utf-8")
    return folder
