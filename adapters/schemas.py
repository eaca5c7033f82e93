"""The standards' schemas shipped in adapters/data, loaded once, and validation against them (pure).

XSDs are compiled with lxml from the local copies (their imports resolve to files beside them,
never to the network); JSON Schemas are checked with jsonschema. A failure is a DocumentError
naming the element or field path.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from lxml import etree

from adapters.document import DocumentError

DATA = Path(str(resources.files("adapters") / "data"))


@cache
def xsd(relative: str) -> etree.XMLSchema:
    """The compiled XSD at adapters/data/<relative>."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(DATA / relative), parser))


def check_xml(root: etree._Element, relative: str) -> None:
    """Raise DocumentError (the first error's line and element) unless root is valid against the XSD."""
    schema = xsd(relative)
    if schema.validate(root):
        return
    error = schema.error_log.filter_from_errors()[0] if schema.error_log.filter_from_errors() else None
    if error is None:  # pragma: no cover - lxml reports at least one error when validation fails
        raise DocumentError("/", f"is not valid against {relative}")
    where = error.path or "/"
    raise DocumentError(where, f"line {error.line}: {error.message}")


@cache
def json_schema(relative: str) -> jsonschema.protocols.Validator:
    """A validator for the JSON Schema at adapters/data/<relative>, of the draft it declares."""
    schema = json.loads((DATA / relative).read_text(encoding="utf-8"))
    return validator_for(schema)


def validator_for(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of the draft the schema declares (draft 2020-12 when it declares none)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check_json(document: Any, validator: jsonschema.protocols.Validator) -> None:
    """Raise DocumentError at the first (best) error's path unless the document is valid."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return
    path = "/" + "/".join(str(p) for p in error.absolute_path)
    raise DocumentError(path, error.message[:300])
