"""Owns what every HubService handler does first and last: who calls, whether the hub serves, refusals as statuses.

Also the count of each agency's open streams (Connect, PublishStream): a stream over the cap
(hub.max_streams_per_agency) is refused with TOO_MANY_STREAMS before it does any work, and the
agency's other streams go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc_status import rpc_status

from broker.audit.records import Caller
from broker.edge.identity import IdentityResolver
from broker.edge.revocations import RevocationStore
from broker.edge.status import status_of
from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable, Unauthenticated
from broker.limits import StreamCount
from broker.ops.metrics import UNREGISTERED, Metrics
from broker.policy.revocation import CertificateFacts, Revocations

Context = grpc.aio.ServicerContext[Any, Any]


class Edge:
    """The calling agency from the client certificate, the draining flag, and refusals counted and sent as statuses."""

    def __init__(
        self,
        metrics: Metrics,
        is_registered: Callable[[str], bool],
        streams: StreamCount | None = None,
        revocations: RevocationStore | None = None,
    ) -> None:
        """Registered agencies are those is_registered accepts; refusals are counted in metrics.

        streams counts each agency's open streams against its cap (no cap when None). With
        revocations, a certificate the lists in force revoke is refused on every call, and the
        open streams of one that a reloaded list revokes are ended (until_revoked).
        """
        self._metrics = metrics
        self._identity = IdentityResolver()
        self._is_registered = is_registered
        self.streams = streams if streams is not None else StreamCount(0)
        self.draining = False
        self._revocations = revocations
        # The certificates of open streams, each with the event that ends its stream when revoked.
        self._watched: dict[asyncio.Event, CertificateFacts] = {}
        if revocations is not None:
            revocations.on_change(self._revocations_changed)

    def agency(self, context: Context) -> str:
        """The calling agency's id (refused if not registered)."""
        return self.caller(context).agency_id

    def caller(self, context: Context) -> Caller:
        """The caller (agency and operator) from the client certificate; refused if its agency is not registered."""
        caller, cert = self._identity.identify(context)
        self._check_revoked(cert)
        if not self._is_registered(caller.agency_id):
            raise Refused(Reason.AGENCY_NOT_REGISTERED, "the certificate's agency is not registered at this hub")
        return caller

    def _check_revoked(self, cert: CertificateFacts) -> None:
        """Refuse a certificate the lists in force revoke (UNAUTHENTICATED, CERTIFICATE_REVOKED)."""
        if self._revocations is None:
            return
        why = self._revocations.current.revoked(cert)
        if why is not None:
            raise Unauthenticated(
                Reason.CERTIFICATE_REVOKED,
                f"the client certificate is revoked: {why}; ask the hub's operators for a new one",
            )

    async def until_revoked(self, context: Context) -> None:
        """Wait while the call's certificate stays trusted; raise Unauthenticated CERTIFICATE_REVOKED once revoked.

        A long-lived call (Connect, PublishStream) runs this beside its work: a reload that
        revokes the certificate ends it at once (the liveness bound is the reload interval).
        """
        _, cert = self._identity.identify(context)
        if self._revocations is None:
            await asyncio.Event().wait()  # never revoked: wait until the call ends
            return
        event = asyncio.Event()
        self._watched[event] = cert
        try:
            self._check_revoked(cert)  # revoked between the call's first check and now
            await event.wait()
            self._metrics.revoked_streams.inc()
            self._check_revoked(cert)
            raise Unauthenticated(Reason.CERTIFICATE_REVOKED, "the client certificate is revoked")
        finally:
            del self._watched[event]

    def _revocations_changed(self, revocations: Revocations) -> None:
        """New lists in force: wake the open streams whose certificate they revoke."""
        for event, cert in list(self._watched.items()):
            if revocations.revoked(cert) is not None:
                event.set()

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
