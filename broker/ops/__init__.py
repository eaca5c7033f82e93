"""Operations: what the platform team sees and what keeps the hub whole.

metrics (Prometheus, and the /livez and /readyz endpoints on the same port), logging
(structlog with an allow-list of keys: no personal data), supervisor (the owner of the hub's
background tasks: one that fails stops the hub).
"""
