"""Agreements as data: the frozen values an agreement file becomes once checked (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

# CAP categories, EIDO-independent priority order (lower is more urgent), and weekdays.
PRIORITY_RANK = {"IMMEDIATE": 1, "HIGH": 2, "NORMAL": 3, "LOW": 4}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PREFETTURA = "prefettura"
PREFETTURA_PREFIX = "it.pref."


@dataclass(frozen=True, slots=True)
class Territory:
    """A set of ISTAT comuni, provinces (historic three-digit codes) and regions."""

    comuni: frozenset[str] = frozenset()
    provinces: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()

    def keys(self) -> frozenset[str]:
        """Index keys: "c:<comune>", "p:<province>", "r:<region>"."""
        return frozenset(
            {f"c:{c}" for c in self.comuni} | {f"p:{p}" for p in self.provinces} | {f"r:{r}" for r in self.regions}
        )

    def __bool__(self) -> bool:
        """True if it names any place."""
        return bool(self.comuni or self.provinces or self.regions)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a rule applies, in Europe/Rome time; every field optional."""

    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()  # 0 = Monday
    start: time | None = None
    end: time | None = None

    def active(self, local: datetime) -> bool:
        """Whether the schedule covers this local time. A window crossing midnight belongs to its starting day."""
        day = local
        if self.start is not None and self.end is not None and self.start > self.end and local.time() < self.end:
            day = local - timedelta(days=1)  # the small hours belong to the evening before
        if self.months and day.month not in self.months:
            return False
        if self.weekdays and day.weekday() not in self.weekdays:
            return False
        if self.start is None or self.end is None:
            return True
        now = local.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end


@dataclass(frozen=True, slots=True)
class Party:
    """An agency that signed the agreement, its role and where it is competent."""

    agency: str
    role: str
    name: str = ""
    covers: Territory = field(default_factory=Territory)
    drills: bool = False


@dataclass(frozen=True, slots=True)
class RoleView:
    """What a recipient role may see: the personal-data categories granted and the extra paths hidden."""

    personal_data: frozenset[str] = frozenset()
    hide: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may send what to whom, where and when."""

    id: str
    senders: frozenset[str]  # agency ids (roles resolved)
    recipients: frozenset[str]  # agency ids (roles resolved)
    kinds: frozenset[str]
    payloads: frozenset[str] = frozenset()
    incident_types: frozenset[str] = frozenset()
    alert_categories: frozenset[str] = frozenset()
    min_priority: str = ""
    select: str = "explicit"
    territory: Territory = field(default_factory=Territory)
    schedule: Schedule | None = None
    description: str = ""
    # Requests only: if no recipient answers within escalate_after seconds, escalate_to gets it.
    escalate_after: int = 0
    escalate_to: str = ""
    # Seconds after acceptance a delivery under this rule expires (0: the hub's default).
    expire_after: int = 0


@dataclass(frozen=True, slots=True)
class Agreement:
    """One agreement file, checked."""

    id: str
    title: str
    source: str
    valid_from: date
    valid_until: date | None
    law: str
    purposes: frozenset[str]
    territory: Territory
    parties: tuple[Party, ...]
    roles: dict[str, RoleView]
    rules: tuple[Rule, ...]
    kind: str = "patto"
    id_line: int = 1  # where the id is written, for errors about the set

    def party(self, agency: str) -> Party | None:
        """The party of that agency, if it signed."""
        for party in self.parties:
            if party.agency == agency:
                return party
        return None

    def view_of(self, agency: str) -> RoleView:
        """What that party's role may see (nothing personal if the role is not described)."""
        party = self.party(agency)
        if party is None:
            return RoleView()
        return self.roles.get(party.role, RoleView())

    def in_force(self, day: date) -> bool:
        """Whether the agreement is in force on that (Europe/Rome) day."""
        return self.valid_from <= day and (self.valid_until is None or day <= self.valid_until)


@dataclass(frozen=True)
class AgreementSet:
    """Every agreement in force at the hub, as loaded together (a reload replaces the whole set)."""

    agreements: tuple[Agreement, ...]
    digest: str = ""

    @property
    def agencies(self) -> frozenset[str]:
        """Every agency that is a party of some agreement."""
        return frozenset(p.agency for a in self.agreements for p in a.parties)
