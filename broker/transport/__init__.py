"""The hub's JetStream transport: the only package that imports nats."""
