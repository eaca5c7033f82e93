"""Connectors: processes that carry standard documents between a room's system and the hub.

Each connector holds its agency's certificate and is a client of the hub through opsroom_client,
like any room: what it publishes the hub validates, routes and audits as the agency's own.
`common` holds what they share (settings, the client, hub refusals as HTTP statuses); `cap` is the
CAP connector (HTTP in, Atom feed out). The NUE SOAP, EIDO WebSocket and EMSI HTTP connectors are
not built yet (adapters/README.md).
"""
