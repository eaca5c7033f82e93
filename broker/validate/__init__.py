"""Validation of an envelope against the contract's rules and the real code lists (pure).

checker (validate_envelope, and the envelope's own rules: recipients, areas, references, legal
basis, which payload a kind admits), incident, request and alert (each payload's rules),
fields (limits, the context, formats, code sets, and the base that checks single values),
codelists (ISTAT comuni and provinces, EIDO and EMSI codes, loaded from broker/data).
"""
