"""The opsroom hub: gRPC edge, identity, validation, routing, JetStream transport, metrics and CLI."""
