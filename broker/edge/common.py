"""Owns what every HubService handler does first and last: who calls, whether the hub serves, refusals as statuses.

Also the count of each agency's open streams (Connect, PublishStream): a stream over the cap
(hub.max_streams_per_agency) is refused with TOO_MANY_STREAMS before it does any work, and the
agency's other streams go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc_status import rpc_status

from broker.audit.records import Caller
from broker.edge.identity import IdentityResolver
from broker.edge.status import status_of
from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable
from broker.limits import StreamCount
from broker.ops.metrics import UNREGISTERED, Metrics

Context = grpc.aio.ServicerContext[Any, Any]


class Edge:
    """The calling agency from the client certificate, the draining flag, and refusals counted and sent as statuses."""

    def __init__(
        self, metrics: Metrics, is_registered: Callable[[str], bool], streams: StreamCount | None = None
    ) -> None:
        """Registered agencies are those is_registered accepts; refusals are counted in metrics.

        streams counts each agency's open streams against its cap (no cap when None).
        """
        self._metrics = metrics
        self._identity = IdentityResolver()
        self._is_registered = is_registered
        self.streams = streams if streams is not None else StreamCount(0)
        self.draining = False

    def agency(self, context: Context) -> str:
        """The calling agency's id (refused if not registered)."""
        return self.caller(context).agency_id

    def caller(self, context: Context) -> Caller:
        """The caller (agency and operator) from the client certificate; refused if its agency is not registered."""
        caller = self._identity.caller(context)
        if not self._is_registered(caller.agency_id):
            raise Refused(Reason.AGENCY_NOT_REGISTERED, "the certificate's agency is not registered at this hub")
        return caller

    def refused(self, agency: str, err: OpsroomError) -> None:
        """Count a refusal (under the agency, or as unregistered)."""
        label = agency if self._is_registered(agency) else UNREGISTERED
        self._metrics.refusals.labels(label, err.reason.code.name, err.reason.name).inc()

    async def abort(self, context: Context, agency: str, err: OpsroomError, prefix: str = "") -> NoReturn:
        """End the call with err as a google.rpc.Status (field paths under prefix), counted."""
        self.refused(agency, err)
        status = rpc_status.to_status(status_of(err, prefix))
        await context.abort(status.code, status.details, status.trailing_metadata)

    def check_draining(self) -> None:
        """Refuse new work while the hub stops."""
        if self.draining:
            raise StoreUnavailable("the hub is stopping; retry on another replica")
