"""opsroom-client: an agency's Python client of the opsroom hub, and the contract's generated code.

    from opsroom_client import Credentials, HubClient, new_envelope

The generated messages and stubs of the contract are the `opsroom` package beside this one
(`from opsroom.hub.v1 import hub_pb2`). See the package README for connecting, publishing,
receiving, acknowledging, receipts, retries and the outbox.
"""

from opsroom_client.client import Credentials, HubClient
from opsroom_client.envelopes import new_envelope, timestamp
from opsroom_client.errors import FieldProblem, HubError
from opsroom_client.inbox import Inbox
from opsroom_client.outbox import Outbox, OutboxReport
from opsroom_client.publisher import StreamPublisher
from opsroom_client.retry import RetryPolicy

__all__ = [
    "Credentials",
    "FieldProblem",
    "HubClient",
    "HubError",
    "Inbox",
    "Outbox",
    "OutboxReport",
    "RetryPolicy",
    "StreamPublisher",
    "new_envelope",
    "timestamp",
]
