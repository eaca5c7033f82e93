"""Delivery to rooms and what follows it.

sessions (a room's Connect session over its pull consumers: backlog, live, acks, gaps),
receipts (the records of acks, answers and notices, and the receipt built from them, pure),
escalation (unanswered requests sent on to the alternate room), expiry (expired deliveries of
rooms away, noticed to their senders).
"""
