"""Development helpers, never imported by the running hub (only `opsroom demo`, `dev-certs`, `sim` and tests).

embedded (a real nats-server on loopback), cluster (three of them), certs (a development
PKI), testing (a local hub for tests and benchmarks), sim (simulated operations rooms).
"""
