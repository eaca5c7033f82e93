"""The standards' schemas shipped in adapters/data, loaded once, and validation against them (pure).

XSDs are compiled with lxml from the local copies (their imports resolve to files beside them,
never to the network); JSON Schemas are checked with jsonschema; the schemas NENA publishes as
OpenAPI 3.0 components (EIDO, the EIDO conveyance) are turned into JSON Schema 2020-12. A failure
is a DocumentError naming the element or field path.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
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


_COMPONENT_REF = "#/components/schemas/"
# RFC 3339 date-time: jsonschema checks `format: date-time` only with an optional package, so
# schemas derived from OpenAPI also carry it as a pattern.
DATE_TIME = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)


@cache
def from_openapi(relative: str, root: str) -> dict[str, Any]:
    """JSON Schema 2020-12 of the OpenAPI 3.0 components at adapters/data/<relative>, rooted at one of them.

    Component refs become $defs refs; refs to files not shipped (EIDO's NIEM components) become any
    object; a string minItems (EIDO AgentType's "1,") an integer; `nullable` a null type.
    """
    openapi = yaml.safe_load((DATA / relative).read_text(encoding="utf-8"))
    components = openapi["components"]["schemas"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/$defs/{root}",
        "$defs": {name: _convert(schema) for name, schema in components.items()},
    }


def _convert(node: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        return _convert_ref(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key == "minItems" and isinstance(value, str):
            out[key] = int(value.strip().rstrip(","))
        elif key == "nullable":
            continue
        else:
            out[key] = _convert(value)
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("format") == "date-time" and "pattern" not in out:
        out["pattern"] = DATE_TIME
    return out


def _convert_ref(node: dict[str, Any]) -> dict[str, Any]:
    ref: str = node["$ref"]
    if ref.startswith(_COMPONENT_REF):
        out: dict[str, Any] = {k: _convert(v) for k, v in node.items() if k != "$ref"}
        out["$ref"] = "#/$defs/" + ref.removeprefix(_COMPONENT_REF)
        return out
    # Components in files not shipped (EIDO's NIEMComponents/nc.yaml, j.yaml): any object.
    return {"type": "object", **{k: v for k, v in node.items() if k == "description"}}
