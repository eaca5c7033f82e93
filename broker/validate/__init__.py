"""Validation of an envelope against the contract's rules and the real code lists (pure).

checker (the rules, field by field, with the path of each violation), codelists (ISTAT
comuni and provinces, EIDO and EMSI codes, loaded from broker/data).
"""
