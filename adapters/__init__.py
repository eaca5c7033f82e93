"""Adapters between external formats and the hub, one subpackage per format (none is built yet).

Planned: CAP 1.2, NENA EIDO, the 112 NUE contact card, CAD REST; each a pure codec and a connector.
"""
