"""Redaction: the catalogue of personal-data fields and the removal of hidden fields from an envelope (pure).

A path names a field of the Envelope by proto field names ("incident.call.caller"); it goes
through repeated fields, applying to every element ("incident.vehicles.plate" is every
vehicle's plate). A path ending in "[type=Caller]" removes the elements of a repeated field
whose `type` is that value. The envelope's header (ids, sender agency, times, status, kind,
recipients, territory, legal basis) is never hidden.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opsroom.envelope.v1 import envelope_pb2

# Personal data (Directive 2016/680 art. 3(1)) the hub may carry, by category. A recipient sees
# a category only if an agreement grants it to the recipient's role under its legal basis.
PERSONAL_DATA: Mapping[str, tuple[str, ...]] = {
    "caller": (
        "incident.call.caller",
        "incident.locations[type=Caller]",
        "handover_request.incident.call.caller",
        "handover_request.incident.locations[type=Caller]",
        "origin.unmapped[category=caller]",
    ),
    "network_location": (
        "incident.call.network_location",
        "handover_request.incident.call.network_location",
        "origin.unmapped[category=network_location]",
    ),
    "persons": ("incident.persons", "handover_request.incident.persons", "origin.unmapped[category=persons]"),
    "vehicles": (
        "incident.vehicles.plate",
        "incident.vehicles.vin",
        "handover_request.incident.vehicles.plate",
        "handover_request.incident.vehicles.vin",
        "alert.vehicles.plate",
        "alert.vehicles.vin",
        "origin.unmapped[category=vehicles]",
    ),
    "free_text": (
        "incident.description",
        "incident.notes.text",
        "incident.locations.address.additional_info",
        "handover_request.reason",
        "handover_request.incident.description",
        "handover_request.incident.notes.text",
        "handover_request.incident.locations.address.additional_info",
        "assistance_request.remarks",
        "assistance_request.location.address.additional_info",
        "closure.remarks",
        "acknowledgement.description",
        "alert.infos.headline",
        "alert.infos.description",
        "alert.infos.contact",
        "alert.note",
        "origin.unmapped",
    ),
    "media": (
        "incident.media",
        "handover_request.incident.media",
        "alert.infos.resources",
        "origin.unmapped[category=media]",
    ),
    "staff": (
        "sender.operator_id",
        "sender.workstation_id",
        "incident.notes.author_operator_id",
        "handover_request.incident.notes.author_operator_id",
        "origin.unmapped[category=staff]",
    ),
}
CATEGORIES = frozenset(PERSONAL_DATA)

# Header fields no mask may remove, nor any field inside them: without them a delivery cannot be
# routed, answered or audited. Of the sender, only the staff ids may be hidden.
PROTECTED_HEADER = frozenset(
    {
        "distribution_id",
        "sent_at",
        "status",
        "kind",
        "recipients",
        "target_areas",
        "confidentiality",
        "incident_ids",
        "references",
        "legal_basis",
        "expires_at",
    }
)
_HIDEABLE_SENDER = frozenset({"sender.operator_id", "sender.workstation_id"})


class PathError(ValueError):
    """A hide path that names no field of the Envelope, or a protected one."""


def check_path(path: str) -> None:
    """Raise PathError unless path names a field of the Envelope that may be hidden."""
    name, _, selector = path.partition("[")
    root = name.split(".")[0]
    if root in PROTECTED_HEADER or (root == "sender" and name not in _HIDEABLE_SENDER):
        raise PathError(f"{path} is part of the envelope's header and cannot be hidden")
    descriptor: Descriptor | None = envelope_pb2.Envelope.DESCRIPTOR
    field: FieldDescriptor | None = None
    for part in name.split("."):
        if descriptor is None:
            raise PathError(f"{path}: {part} is inside a field that is not a message")
        field = descriptor.fields_by_name.get(part)
        if field is None:
            raise PathError(f"{path}: no field {part} in {descriptor.full_name}")
        descriptor = field.message_type
    if selector:
        key, equals, _value = selector.rstrip("]").partition("=")
        if field is None or not field.is_repeated or descriptor is None or not equals:
            raise PathError(f"{path}: a [field=value] selector needs a repeated message field")
        if key not in descriptor.fields_by_name:
            raise PathError(f"{path}: no field {key} in {descriptor.full_name}")


@dataclass(frozen=True)
class Mask:
    """A compiled set of hidden paths: a tree of field names; a leaf removes the field."""

    hidden: frozenset[str]
    tree: Mapping[str, Any]

    @property
    def empty(self) -> bool:
        """True when nothing is hidden."""
        return not self.hidden


def compile_mask(hidden: Iterable[str]) -> Mask:
    """A Mask for these paths (each checked)."""
    paths = frozenset(hidden)
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        check_path(path)
        name, _, selector = path.partition("[")
        parts = name.split(".")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is True:
                break  # an ancestor is removed whole
            node = child
        else:
            leaf = parts[-1]
            if selector:
                key, _, value = selector.rstrip("]").partition("=")
                existing = node.get(leaf)
                if existing is not True:
                    filters = node.setdefault(leaf, {})
                    filters.setdefault("[]", set()).add((key, value))
            else:
                node[leaf] = True
    return Mask(paths, tree)


def mask_for(personal_data: Iterable[str], hide: Iterable[str]) -> Mask:
    """The mask of a recipient that may see these personal-data categories, with these extra paths hidden."""
    granted = frozenset(personal_data)
    hidden = {path for category, paths in PERSONAL_DATA.items() if category not in granted for path in paths}
    return compile_mask(hidden | set(hide))


FULL = compile_mask(())


def redact(envelope: envelope_pb2.Envelope, mask: Mask) -> envelope_pb2.Envelope:
    """A copy of envelope without the fields the mask hides (the envelope itself is untouched)."""
    return redact_reporting(envelope, mask)[0]


def redact_reporting(envelope: envelope_pb2.Envelope, mask: Mask) -> tuple[envelope_pb2.Envelope, tuple[str, ...]]:
    """redact, and the mask's paths that removed something from this envelope, sorted.

    Those paths, compiled into a mask of their own, make the same copy of this envelope: the
    plan of a delivery records them instead of the whole mask (broker.publish.plan).
    """
    out = envelope_pb2.Envelope()
    out.CopyFrom(envelope)
    removed: set[str] = set()
    if not mask.empty:
        _apply(out, mask.tree, "", removed)
    return out, tuple(sorted(removed))


def _apply(message: Any, tree: Mapping[str, Any], prefix: str, removed: set[str]) -> None:
    for name, rule in tree.items():
        if name == "[]":
            continue
        field: FieldDescriptor = message.DESCRIPTOR.fields_by_name[name]
        path = prefix + name
        if rule is True:
            if _has(message, field):
                message.ClearField(name)
                removed.add(path)
            continue
        if field.is_repeated:
            items = getattr(message, name)
            filters = rule.get("[]", ())
            if filters:
                _filter(items, filters, path, removed)
            for item in items:
                _apply(item, rule, path + ".", removed)
        elif message.HasField(name):
            _apply(getattr(message, name), rule, path + ".", removed)


def _filter(items: Any, filters: Iterable[tuple[str, str]], path: str, removed: set[str]) -> None:
    """Remove the elements of a repeated field that a [key=value] selector names; note the selectors that hit."""
    keep = []
    for item in items:
        hit = [(k, v) for k, v in filters if str(getattr(item, k)) == v]
        if hit:
            removed.update(f"{path}[{k}={v}]" for k, v in hit)
        else:
            keep.append(item)
    if len(keep) != len(items):
        copies = [type(item)() for item in keep]
        for copy, item in zip(copies, keep, strict=True):
            copy.CopyFrom(item)
        del items[:]
        items.extend(copies)


def _has(message: Any, field: FieldDescriptor) -> bool:
    """Whether a field is set (a repeated one: not empty; a scalar without presence: not its default)."""
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return bool(message.HasField(field.name))
    return bool(getattr(message, field.name))


def present_hidden(envelope: envelope_pb2.Envelope, mask: Mask) -> list[str]:
    """Hidden paths that are nevertheless set in envelope (empty after a correct redaction)."""
    return [path for path in sorted(mask.hidden) if _is_set(envelope, path)]


def _descend(message: Any, parts: list[str]) -> list[Any]:
    """The messages reached by following parts (through every element of repeated fields)."""
    current = [message]
    for part in parts:
        nxt = []
        for item in current:
            if item.DESCRIPTOR.fields_by_name[part].is_repeated:
                nxt.extend(getattr(item, part))
            elif item.HasField(part):
                nxt.append(getattr(item, part))
        current = nxt
    return current


def _is_set(message: Any, path: str) -> bool:
    name, _, selector = path.partition("[")
    parts = name.split(".")
    leaf = parts[-1]
    key, _, wanted = selector.rstrip("]").partition("=")
    for item in _descend(message, parts[:-1]):
        field = item.DESCRIPTOR.fields_by_name[leaf]
        value = getattr(item, leaf)
        if selector:
            present = any(str(getattr(element, key)) == wanted for element in value)
        elif field.is_repeated:
            present = len(value) > 0
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            present = item.HasField(leaf)
        else:
            present = bool(value)
        if present:
            return True
    return False
