"""Where the hub keeps things in its JetStream stream: subjects, message ids and consumer names (pure).

One stream holds every agency's deliveries, the first answer to each envelope and the receipts,
so that an envelope's deliveries and its acceptance record commit in one atomic batch:

    <prefix>.dlv.<agency>                     one message per (envelope, recipient)
    <prefix>.acc.<distribution id>            the acceptance record (one per envelope, ever)
    <prefix>.rcpt.<distribution id>.<agency>.dlv   the recipient's client acknowledged it
    <prefix>.rcpt.<distribution id>.<agency>.rsp   the recipient's operator answered it

<agency> is the agency id with dots as underscores (broker.ids.agency_token).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.ids import agency_token

DISTRIBUTION_HEADER = "Opsroom-Distribution-Id"


@dataclass(frozen=True)
class Layout:
    """Subject and name scheme under one prefix."""

    prefix: str = "opsroom"

    @property
    def stream_subjects(self) -> list[str]:
        """Subjects the stream captures."""
        return [f"{self.prefix}.>"]

    def delivery_subject(self, agency_id: str) -> str:
        """Subject of an agency's deliveries."""
        return f"{self.prefix}.dlv.{agency_token(agency_id)}"

    def acceptance_subject(self, distribution_id: str) -> str:
        """Subject of an envelope's acceptance record."""
        return f"{self.prefix}.acc.{distribution_id}"

    def delivered_subject(self, distribution_id: str, agency_id: str) -> str:
        """Subject of a recipient's technical acknowledgement."""
        return f"{self.prefix}.rcpt.{distribution_id}.{agency_token(agency_id)}.dlv"

    def response_subject(self, distribution_id: str, agency_id: str) -> str:
        """Subject of a recipient's business answer."""
        return f"{self.prefix}.rcpt.{distribution_id}.{agency_token(agency_id)}.rsp"

    def receipts_filter(self, distribution_id: str) -> str:
        """Filter matching every receipt record of an envelope."""
        return f"{self.prefix}.rcpt.{distribution_id}.>"

    @staticmethod
    def consumer_name(agency_id: str) -> str:
        """Durable consumer of an agency's deliveries."""
        return f"dlv_{agency_token(agency_id)}"

    @staticmethod
    def delivery_msg_id(distribution_id: str, agency_id: str) -> str:
        """JetStream message id (dedup key) of one delivery."""
        return f"{distribution_id}:{agency_token(agency_id)}"
