"""Fault-injection tests: real nats-server, hub and room processes, killed, paused and restarted under load."""
