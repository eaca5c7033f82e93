"""The policy engine: agreements as data, routing by agreement, per-recipient redaction, hot reload."""
