"""What every codec shares (pure): the decode context, the bounds, the typed document error, safe parsing.

A codec turns a standard document into an opsroom envelope and back. It never trusts the
document: XML is parsed with no DTD, no entity expansion, no external entity, no XInclude and no
network; JSON with no NaN, no duplicate key; both under a size, depth and element bound, so that a
document costs at most time and memory proportional to the bound. Whatever is wrong is raised as a
DocumentError naming the element or field path, the way an integrator can find it in the file.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2


class DocumentError(ValueError):
    """A document that cannot be decoded or encoded: where (element or field path) and what is wrong."""

    def __init__(self, path: str, reason: str) -> None:
        """Path is "/" for the document as a whole."""
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DocumentTooLarge(DocumentError):
    """A document over one of the bounds (size, depth, elements, items): refused, not truncated."""


class UnsupportedDocument(DocumentError):
    """A document of another standard, version or root element than the codec decodes."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one document; the defaults admit a 1 MB polygon or a 1,000-geocode CAP alert."""

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_elements: int = 200_000
    max_text: int = 1024 * 1024


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Context:
    """What a decoder needs besides the document: who sends it, and under which legal basis.

    The agency is the connector's (its client certificate's), never taken from the document:
    the document's own sender is kept in Envelope.origin.
    """

    agency_id: str
    law: str = "d.l. 14/2017 art. 2"
    purpose: common_pb2.Purpose.ValueType = common_pb2.PURPOSE_PUBLIC_SECURITY
    agreement_id: str = ""
    recipients: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def legal_basis(self) -> common_pb2.LegalBasis:
        """The legal basis every decoded envelope carries."""
        return common_pb2.LegalBasis(law=self.law, purpose=self.purpose, agreement_id=self.agreement_id)


# Namespace of the distribution ids derived from a document's own id (uuid5 of format, sender, id):
# the same document sent twice gets the same distribution id, so the hub stores it once.
_ID_NAMESPACE = uuid.UUID("6b1f3c1e-7f0e-5d4a-9a59-0b8f6d0c2a11")


def distribution_id(fmt: str, sender: str, identifier: str) -> str:
    """The distribution id of a document, derived from its format, its sender and its own id."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{fmt}\n{sender}\n{identifier}"))


def classify(origin: envelope_pb2.Origin, rules: Sequence[tuple[str, str]]) -> None:
    """Give each unmapped element the personal-data category of the first rule its path matches.

    rules are (regular expression searched in the path, category); an element no rule matches
    stays free text. A recipient then needs the category, besides free text, to see the element.
    """
    compiled = [(re.compile(pattern), category) for pattern, category in rules]
    for item in origin.unmapped:
        item.category = next((category for regex, category in compiled if regex.search(item.path)), "")


def check_size(data: bytes, limits: Limits) -> None:
    """Refuse a document over the size bound before parsing it."""
    if len(data) > limits.max_bytes:
        raise DocumentTooLarge("/", f"is {len(data)} bytes, over the limit of {limits.max_bytes}")


class _NoFetch(etree.Resolver):
    """Refuses every external DTD or entity libxml2 would load, file or network, before it is opened."""

    def resolve(self, system_url: str | None, public_id: str | None, context: object) -> None:  # noqa: ARG002
        raise DocumentError("/", "refers to an external DTD or entity; nothing is fetched")


def _parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    parser.resolvers.add(_NoFetch())
    return parser


def parse_xml(data: bytes, limits: Limits = DEFAULT_LIMITS) -> etree._Element:
    """The root element of an XML document, parsed safely; DocumentError if it is not one.

    A DOCTYPE (and with it every entity declaration) is refused outright; so is any entity
    reference left in the tree.
    """
    check_size(data, limits)
    try:
        root = etree.fromstring(data, _parser())
    except DocumentError:
        raise
    except etree.XMLSyntaxError as exc:
        line = f"line {exc.lineno}: " if exc.lineno else ""
        raise DocumentError("/", f"is not well-formed XML ({line}{exc.msg})") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise DocumentError("/", "has a DOCTYPE; DTDs and entity declarations are not accepted")
    for count, element in enumerate(root.iter(), 1):
        if count > limits.max_elements:
            raise DocumentTooLarge("/", f"has more than {limits.max_elements} elements")
        if not isinstance(element.tag, str):  # comments and PIs are dropped: an entity reference
            raise DocumentError(xml_path(element), "entity references are not accepted")
        if _depth(element) > limits.max_depth:
            raise DocumentTooLarge(xml_path(element), f"is nested deeper than {limits.max_depth} levels")
        text = element.text
        if text is not None and len(text) > limits.max_text:
            raise DocumentTooLarge(xml_path(element), f"has more than {limits.max_text} characters of text")
    return root


def _depth(element: etree._Element) -> int:
    depth = 0
    node: etree._Element | None = element
    while node is not None:
        depth += 1
        node = node.getparent()
    return depth


def local_name(element: etree._Element) -> str:
    """An element's name without its namespace."""
    return etree.QName(element).localname


def xml_path(element: etree._Element) -> str:
    """The element's path from the root by local names, with a 0-based index where a name repeats."""
    parts: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        parent = node.getparent()
        name = local_name(node) if isinstance(node.tag, str) else "#node"
        if parent is not None:
            same = [c for c in parent if isinstance(c.tag, str) and c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node)}]"
        parts.append(name)
        node = parent
    return "/" + "/".join(reversed(parts))


def load_json(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A JSON document parsed safely: UTF-8, no NaN or Infinity, no repeated key, within the bounds."""
    check_size(data, limits)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError("/", f"is not UTF-8 (byte {exc.start})") from None
    if _json_nesting(text) > limits.max_depth:
        raise DocumentTooLarge("/", f"is nested deeper than {limits.max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_repeated_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DocumentError("/", f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_nesting(text: str) -> int:
    """Upper bound of the nesting of a JSON text, counted before parsing (brackets in strings skipped)."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"/{key}", "appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise DocumentError("/", f"contains {name}, which JSON does not allow")
