"""Unwrapping (pure): the document inside an OASIS EDXL-DE 1.0 or 2.0 distribution or an Atom entry.

CAP and EMSI travel bare or wrapped: EDXL-DE 1.0 (contentObject/xmlContent/embeddedXMLContent),
EDXL-DE 2.0 (content/contentObject/contentXML/embeddedXMLContent), its JSON form as the French
Hub Santé sends it (content[]/jsonContent/embeddedJsonContent/message), and CAP in an Atom
entry's content. A codec decodes exactly one document: a wrapper holding none or several is
refused with the path of the wrapper.
"""

from __future__ import annotations

import copy
from typing import Any

from lxml import etree

from adapters.document import DocumentError, local_name, xml_path

DE_1_0 = "urn:oasis:names:tc:emergency:EDXL:DE:1.0"
DE_2_0 = "urn:oasis:names:tc:emergency:EDXL:DE:2.0"
ATOM = "http://www.w3.org/2005/Atom"

# Root (namespace, local name) -> the path of the embedded documents' parent, below the root.
_XML_WRAPPERS: dict[tuple[str, str], tuple[str, ...]] = {
    (DE_1_0, "EDXLDistribution"): ("contentObject", "xmlContent", "embeddedXMLContent"),
    (DE_2_0, "edxlDistribution"): ("content", "contentObject", "contentXML", "embeddedXMLContent"),
    (ATOM, "entry"): ("content",),
    (ATOM, "feed"): ("entry", "content"),
}


def is_wrapper(root: etree._Element) -> bool:
    """Whether the element is an EDXL-DE distribution or an Atom feed or entry."""
    qname = etree.QName(root)
    return (qname.namespace or "", qname.localname) in _XML_WRAPPERS


def unwrap_xml(root: etree._Element) -> etree._Element:
    """The one document a wrapper carries, as the root of a tree of its own; a bare document as is."""
    qname = etree.QName(root)
    steps = _XML_WRAPPERS.get((qname.namespace or "", qname.localname))
    if steps is None:
        return root
    level = [root]
    for step in steps:
        level = [child for parent in level for child in parent if local_name(child) == step]
    documents = [child for parent in level for child in parent if isinstance(child.tag, str)]
    if len(documents) != 1:
        raise DocumentError(xml_path(root), f"carries {len(documents)} documents; exactly one is decoded")
    return copy.deepcopy(documents[0])


def unwrap_json(document: Any) -> tuple[str, Any]:
    """The one message a JSON EDXL-DE distribution carries, with its path; a bare document as is."""
    if not (isinstance(document, dict) and "distributionID" in document and "content" in document):
        return "", document
    content = document["content"]
    if not isinstance(content, list):
        content = [content]
    found: list[tuple[str, Any]] = []
    for i, item in enumerate(content):
        embedded = item.get("jsonContent", {}).get("embeddedJsonContent") if isinstance(item, dict) else None
        if isinstance(embedded, dict) and "message" in embedded:
            found.append((f"/content/{i}/jsonContent/embeddedJsonContent/message", embedded["message"]))
    if len(found) != 1:
        raise DocumentError("/content", f"carries {len(found)} messages; exactly one is decoded")
    return found[0]
