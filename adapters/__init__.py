"""Adapters between the standards agencies speak and the hub's contract.

Codecs, pure, one module per standard, each both ways between a document and an opsroom
envelope: `cap` (OASIS CAP 1.2, bare or in EDXL-DE or Atom), `nue112` (the 112 NUE contact
card), `eido` (NENA EIDO JSON), `emsi` (EMSI, JSON and XML, bare or in EDXL-DE). `document`
holds what they share (safe parsing, bounds, the typed error), `schemas` the standards' schemas
in adapters/data, `codes` the incident-type map between the code lists. Connectors, the
processes that carry these documents to and from the hub, are not built yet (see README.md).
"""
