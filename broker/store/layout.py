"""Where the hub keeps things in its JetStream stream: subjects, message ids, headers, consumer names (pure).

Two streams: the main one holds the urgent lane's deliveries and the records receipts are
built from, the bulk one (<stream>_BULK) the bulk lane's deliveries, so that nats-server stores
an urgent delivery without waiting for a bulk batch:

    <prefix>.dlv.<agency>.<lane>.<distribution id> one message per (envelope, recipient)
    <prefix>.ack.<agency>                          one AckRecord per acknowledgement flush of a room
    <prefix>.rsp.<distribution id>.<agency>        the recipient operator's answer to a request
    <prefix>.ses.<agency>                          SessionRecords: a room's current session and presence
    <prefix>.esc.timer.<distribution id>           a request's EscalationTimer (deadline for an answer)
    <prefix>.esc.done.<distribution id>            the EscalationRecord of a request that escalated

An envelope costs one write per recipient and nothing else: its deliveries carry, in headers,
what a retry and a receipt need (sender, acceptance time, digest of the envelope). Each
delivery's subject is unique and written with "expect no earlier message on this subject", so
a distribution id is taken for as long as the stream keeps its deliveries, beyond JetStream's
duplicate window; within the window the message id "<distribution id>:<agency>" also catches
it. <agency> is the agency id with dots as underscores (broker.ids.agency_token); <lane> is
"urgent" or "bulk" (broker.lanes), and each agency has one consumer per lane.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.ids import agency_from_token, agency_token
from broker.lanes import Lane

SENDER_HEADER = "Opsroom-Sender"
ACCEPTED_AT_HEADER = "Opsroom-Accepted-At"  # nanoseconds since the epoch, hub clock
DIGEST_HEADER = "Opsroom-Sha256"  # of the envelope as the sender sent it
RULE_HEADER = "Opsroom-Rule"  # "<agreement>/<rule>" that allowed the delivery
EXPIRES_HEADER = "Opsroom-Expires"  # nanoseconds since the epoch: not delivered after this, dropped
# The sender of the notices the hub itself writes (an expired delivery).
HUB_AGENCY = "opsroom.hub"


@dataclass(frozen=True)
class Layout:
    """Subject and name scheme under one prefix."""

    prefix: str = "opsroom"

    @property
    def stream_subjects(self) -> list[str]:
        """Subjects the main stream captures: the urgent lane's deliveries and the records."""
        return [
            f"{self.prefix}.dlv.*.{Lane.URGENT.value}.*",
            f"{self.prefix}.ack.>",
            f"{self.prefix}.rsp.>",
            f"{self.prefix}.ses.>",
            f"{self.prefix}.esc.>",
        ]

    @property
    def bulk_stream_subjects(self) -> list[str]:
        """Subjects the bulk stream captures: the bulk lane's deliveries."""
        return [f"{self.prefix}.dlv.*.{Lane.BULK.value}.*"]

    @property
    def audit_subject(self) -> str:
        """The one subject of the audit stream: its messages are the entries of the chain, in order."""
        return f"{self.prefix}.audit"

    def delivery_subject(self, agency_id: str, lane: Lane, distribution_id: str) -> str:
        """Subject of one delivery."""
        return f"{self.prefix}.dlv.{agency_token(agency_id)}.{lane.value}.{distribution_id}"

    def deliveries_of_agency(self, agency_id: str, lane: Lane) -> str:
        """Filter of an agency's deliveries on one lane (the filter of its consumer for that lane)."""
        return f"{self.prefix}.dlv.{agency_token(agency_id)}.{lane.value}.*"

    def deliveries_of_envelope(self, distribution_id: str) -> str:
        """Filter of an envelope's deliveries to every recipient."""
        return f"{self.prefix}.dlv.*.*.{distribution_id}"

    def ack_subject(self, agency_id: str) -> str:
        """Subject of an agency's acknowledgement records."""
        return f"{self.prefix}.ack.{agency_token(agency_id)}"

    def escalation_timer_subject(self, distribution_id: str) -> str:
        """Subject of a request's escalation timer."""
        return f"{self.prefix}.esc.timer.{distribution_id}"

    @property
    def escalation_timers(self) -> str:
        """Filter of every escalation timer (the escalation worker's consumer)."""
        return f"{self.prefix}.esc.timer.*"

    def escalation_subject(self, distribution_id: str) -> str:
        """Subject of the record that a request escalated."""
        return f"{self.prefix}.esc.done.{distribution_id}"

    def session_subject(self, agency_id: str) -> str:
        """Subject of an agency's session records (the last one names its current session)."""
        return f"{self.prefix}.ses.{agency_token(agency_id)}"

    @property
    def sessions_filter(self) -> str:
        """Filter of every agency's session records."""
        return f"{self.prefix}.ses.*"

    def parse_session(self, subject: str) -> str:
        """The agency of a session record's subject."""
        head = f"{self.prefix}.ses."
        if not subject.startswith(head):
            raise ValueError("not a session subject")
        return agency_from_token(subject[len(head) :])

    def response_subject(self, distribution_id: str, agency_id: str) -> str:
        """Subject of a recipient's answer to a request."""
        return f"{self.prefix}.rsp.{distribution_id}.{agency_token(agency_id)}"

    def responses_of_envelope(self, distribution_id: str) -> str:
        """Filter of every answer to a request."""
        return f"{self.prefix}.rsp.{distribution_id}.*"

    def parse_delivery(self, subject: str) -> tuple[str, Lane, str]:
        """(agency id, lane, distribution id) of a delivery subject."""
        head = f"{self.prefix}.dlv."
        if not subject.startswith(head):
            raise ValueError("not a delivery subject")
        token, lane, distribution_id = subject[len(head) :].split(".", 2)
        return agency_from_token(token), Lane(lane), distribution_id

    def parse_response(self, subject: str) -> tuple[str, str]:
        """(request distribution id, agency id) of a response subject."""
        head = f"{self.prefix}.rsp."
        if not subject.startswith(head):
            raise ValueError("not a response subject")
        distribution_id, _, token = subject[len(head) :].partition(".")
        return distribution_id, agency_from_token(token)

    @staticmethod
    def consumer_name(agency_id: str, lane: Lane, session_id: str = "") -> str:
        """Durable consumer of an agency's deliveries on one lane: a session's own, or the agency's first (no session).

        Each delivery session pulls from a consumer of its own: a pull request or an
        acknowledgement of an earlier session, still on its way, can reach only the earlier
        session's consumer, never take or acknowledge the new session's deliveries.
        """
        base = f"dlv_{agency_token(agency_id)}_{lane.value}"
        return f"{base}_{session_id}" if session_id else base

    @staticmethod
    def delivery_sequence(lane: Lane, stream_seq: int) -> int:
        """The sequence a room sees for a delivery: the stream sequence with the lane in its lowest bit.

        The lanes live in two streams whose sequences overlap; this keeps a room's sequences
        unique and increasing within each lane.
        """
        return stream_seq * 2 + (1 if lane is Lane.BULK else 0)

    @staticmethod
    def parse_sequence(sequence: int) -> tuple[Lane, int]:
        """(lane, stream sequence) of a sequence a room acknowledged."""
        return (Lane.BULK if sequence & 1 else Lane.URGENT), sequence >> 1

    @staticmethod
    def delivery_msg_id(distribution_id: str, agency_id: str) -> str:
        """JetStream message id (dedup key within the duplicate window) of one delivery."""
        return f"{distribution_id}:{agency_token(agency_id)}"
