"""The hub's error catalogue (reasons and their status codes) and its exception hierarchy (pure).

Every refusal the hub sends carries a `google.rpc.ErrorInfo` whose `reason` is one of the
`Reason` members below, with `domain` = `ERROR_DOMAIN`. docs/errors.md documents each one and a
test keeps the two in step. Messages name field paths and rules, never values: a value may be
personal data.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ERROR_DOMAIN = "opsroom.hub"


class StatusCode(enum.Enum):
    """The canonical status codes (google/rpc/code.proto, the numbers gRPC sends) the hub uses.

    The catalogue names a code by these; the edge (broker/edge/status.py) turns it into gRPC's
    own, so that this module, and what raises its errors, needs no gRPC.
    """

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class Reason(enum.Enum):
    """A machine-readable refusal reason, its gRPC code and when it is raised."""

    INVALID_ENVELOPE = (StatusCode.INVALID_ARGUMENT, "a field breaks a rule; BadRequest names each field")
    INVALID_REQUEST = (StatusCode.INVALID_ARGUMENT, "a request field outside the envelope breaks a rule")
    MALFORMED_REQUEST = (StatusCode.INVALID_ARGUMENT, "the request bytes are not the protobuf message of the method")
    ENVELOPE_TOO_LARGE = (StatusCode.RESOURCE_EXHAUSTED, "one envelope exceeds the size limit")
    BATCH_TOO_LARGE = (StatusCode.RESOURCE_EXHAUSTED, "a PublishStream request holds too many envelopes")
    CERTIFICATE_WITHOUT_AGENCY = (StatusCode.UNAUTHENTICATED, "no client certificate naming an agency")
    CERTIFICATE_REVOKED = (StatusCode.UNAUTHENTICATED, "the client certificate is revoked (CRL or the hub's deny list)")
    AGENCY_NOT_REGISTERED = (
        StatusCode.PERMISSION_DENIED,
        "the certificate's agency is not in the hub config",
    )
    SENDER_MISMATCH = (StatusCode.PERMISSION_DENIED, "sender.agency_id differs from the certificate")
    RECIPIENT_NOT_ALLOWED = (StatusCode.PERMISSION_DENIED, "no rule allows the sender to reach a recipient")
    NOT_A_RECIPIENT = (StatusCode.PERMISSION_DENIED, "answering a message that was not sent to the caller")
    RECEIPT_NOT_YOURS = (StatusCode.PERMISSION_DENIED, "receipt of a message another agency sent")
    NO_RECIPIENTS = (StatusCode.FAILED_PRECONDITION, "routing selected no recipient")
    DISTRIBUTION_ID_REUSED = (
        StatusCode.FAILED_PRECONDITION,
        "the distribution id was accepted before from another agency or with different content",
    )
    REFERENCE_NOT_FOUND = (StatusCode.FAILED_PRECONDITION, "the answered message is unknown to the hub")
    RESPONSE_MISMATCH = (StatusCode.FAILED_PRECONDITION, "the answer's payload does not fit the request")
    SESSION_NOT_OPENED = (StatusCode.FAILED_PRECONDITION, "a Connect stream did not start with open")
    # No side channels: an acknowledgement names only what the room was sent.
    ACK_NOT_SENT = (StatusCode.INVALID_ARGUMENT, "an ack names a sequence the agency was never sent")
    RECEIPT_NOT_FOUND = (StatusCode.NOT_FOUND, "no receipt for that distribution id")
    SESSION_SUPERSEDED = (StatusCode.ABORTED, "a newer Connect session of the same agency replaced this one")
    HUB_OVERLOADED = (
        StatusCode.RESOURCE_EXHAUSTED,
        "the hub has as many publishes in flight as it takes (in all, or from the caller); retry after RetryInfo",
    )
    # Per-agency limits (docs/architecture.md#per-agency-limits).
    AGENCY_RATE_LIMITED = (
        StatusCode.RESOURCE_EXHAUSTED,
        "the caller publishes faster than its rate on the lane (hub.agency_publish_rate); retry after RetryInfo",
    )
    TOO_MANY_STREAMS = (
        StatusCode.RESOURCE_EXHAUSTED,
        "the caller has as many streams open as the hub allows one agency (hub.max_streams_per_agency)",
    )
    STORE_FULL = (StatusCode.RESOURCE_EXHAUSTED, "the JetStream stream is at its size limit")
    STORE_UNAVAILABLE = (StatusCode.UNAVAILABLE, "JetStream did not confirm the write")
    SHUTTING_DOWN = (StatusCode.UNAVAILABLE, "the hub is draining before it stops")
    ROOM_SILENT = (StatusCode.UNAVAILABLE, "the room sent nothing for the presence timeout: offline")
    INTERNAL = (StatusCode.INTERNAL, "a fault in the hub; nothing was stored for this request")

    @property
    def code(self) -> StatusCode:
        """The gRPC status code sent with this reason."""
        return self.value[0]

    @property
    def summary(self) -> str:
        """One line saying when the reason is raised."""
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the field path (relative to the envelope), a rule id, and what is expected."""

    field: str
    rule: str
    description: str

    def under(self, prefix: str) -> Violation:
        """The same violation with its path placed under `prefix` (e.g. "envelopes[3]")."""
        path = f"{prefix}.{self.field}" if self.field else prefix
        return Violation(path, self.rule, self.description)


@dataclass(eq=False)
class OpsroomError(Exception):
    """Base of every error the hub turns into a gRPC status; `reason` decides the code.

    retry_after, when set, is the wait (seconds) the status asks of the client before it sends
    the same request again (a google.rpc.RetryInfo detail).
    """

    reason: Reason
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[Violation] = ()
    retry_after: float | None = None

    def __post_init__(self) -> None:
        """Keep `args` meaningful for logging and pickling."""
        super().__init__(self.reason.name, self.message)

    def __str__(self) -> str:
        """The reason and the message."""
        return f"{self.reason.name}: {self.message}"

    def under(self, prefix: str) -> OpsroomError:
        """The same error with violation paths placed under `prefix` (itself when it has none)."""
        del prefix
        return self


class InvalidEnvelope(OpsroomError):
    """Raised when an envelope breaks validation rules; carries every violation found."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        """Build from the violations; the message counts them and names the first."""
        first = violations[0] if violations else Violation("", "unknown", "invalid envelope")
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(
            Reason.INVALID_ENVELOPE,
            f"{first.field or 'envelope'}: {first.description}{more}",
            {},
            tuple(violations),
        )

    def under(self, prefix: str) -> InvalidEnvelope:
        """The same error with violation paths placed under `prefix`."""
        return InvalidEnvelope([v.under(prefix) for v in self.violations])


class NotPermitted(OpsroomError):
    """Raised when the caller may not do what it asked (PERMISSION_DENIED)."""


class Unauthenticated(OpsroomError):
    """Raised when the caller has no usable agency identity (UNAUTHENTICATED)."""


class Refused(OpsroomError):
    """Raised for FAILED_PRECONDITION, NOT_FOUND, ABORTED and RESOURCE_EXHAUSTED refusals."""


class StoreUnavailable(OpsroomError):
    """Raised when JetStream did not confirm a write; the client should retry with the same id."""

    def __init__(self, message: str) -> None:
        """Build with reason STORE_UNAVAILABLE."""
        super().__init__(Reason.STORE_UNAVAILABLE, message)


class StoreFull(OpsroomError):
    """Raised when the stream refuses writes because it is full; retry later, alert the operators."""

    def __init__(self, message: str) -> None:
        """Build with reason STORE_FULL."""
        super().__init__(Reason.STORE_FULL, message)


class Overloaded(OpsroomError):
    """Raised when a publish cannot be taken now (HUB_OVERLOADED); retry_after says when to send it again.

    metadata: `scope` ("hub": the hub's bound of publishes in flight on the lane; "agency": the
    caller's own bound; "connection": the bound of the caller's connection), `lane`.
    """

    def __init__(self, scope: str, lane: str, retry_after: float) -> None:
        """Build with reason HUB_OVERLOADED."""
        who = {"hub": "the hub", "connection": "this connection"}.get(scope, "this agency")
        super().__init__(
            Reason.HUB_OVERLOADED,
            f"{who} has as many {lane} publishes in flight as the hub takes; retry after {retry_after:.1f} s",
            {"scope": scope, "lane": lane},
            retry_after=retry_after,
        )


class ConfigError(Exception):
    """Raised when a configuration file is wrong; the message names the file, the key and the rule."""


class ServerUnreachable(Exception):
    """Raised at start when no server of a list answers within the configured time.

    The message is one line naming every server tried, how long, the config key that bounds the
    wait, and what to check.
    """
