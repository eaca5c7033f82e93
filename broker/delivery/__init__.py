"""Delivery to rooms and what follows it.

sessions (a room's Connect session over its pull consumers: backlog, live, acks, gaps),
registry (one session per agency across replicas: a newer one supersedes the older),
receipt_reader (a sender's receipt, read back from the store),
escalation (unanswered requests sent on to the alternate room), expiry (expired deliveries of
rooms away, noticed to their senders).
"""
