"""Writing a HubConfig as the TOML file `opsroom serve --config` reads, so a test can run the hub as its own process.

Settings are written by the config file's naming rule (a field's name; a duration as
`<name>_seconds`), with the few exceptions the file has (audit retention in days, allow rules'
from/to, the revocation lists under [tls], the sizes by payload as [sizes]). The text is parsed back with broker.config.parse before it is used: a setting this
writer does not render (a field added to the hub's config later, say) fails loudly here
instead of running the hub with a default.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from broker.config import HubConfig, parse

_DAY = timedelta(days=1)
_SECTIONS = ("tls", "nats", "agencies", "allow", "agreements", "audit", "limits", "revocation", "payload_bytes")


def _value(value: object) -> str:
    """One TOML value: strings, paths, booleans, numbers, durations (as seconds) and lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        return repr(value.total_seconds())
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return "[" + ", ".join(_value(v) for v in items) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _items(settings: Any, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """The fields of a settings dataclass under their config-file keys; None (unset) and nested tables left out."""
    items: dict[str, object] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in skip or value is None or dataclasses.is_dataclass(value):
            continue
        items[f"{f.name}_seconds" if isinstance(value, timedelta) else f.name] = value
    return items


def _table(header: str, items: dict[str, object]) -> list[str]:
    return [f"[{header}]", *(f"{key} = {_value(value)}" for key, value in items.items()), ""]


def hub_toml(cfg: HubConfig) -> str:
    """The TOML text of cfg (paths as they are in cfg: absolute ones stay valid wherever the file goes)."""
    lines = _table("hub", _items(cfg, skip=_SECTIONS))
    tls = _items(cfg.tls)
    if cfg.revocation is not None:
        tls.update(_items(cfg.revocation))  # the revocation lists are [tls] keys
    lines += _table("tls", tls)
    lines += _table("nats", _items(cfg.nats))
    if cfg.nats.tls is not None:
        lines += _table("nats.tls", _items(cfg.nats.tls))
    if cfg.audit is None:
        lines += _table("audit", {"enabled": False})
    else:
        audit = _items(cfg.audit, skip=("retention",))
        if cfg.audit.retention is not None:
            if cfg.audit.retention % _DAY:
                raise ValueError("the config file keeps audit retention in whole days")
            audit["retention_days"] = cfg.audit.retention // _DAY
        lines += _table("audit", audit)
    if cfg.agreements is not None:
        lines += _table("agreements", _items(cfg.agreements))
    lines += _table("limits", _items(cfg.limits))
    lines += _table("sizes", dict(cfg.payload_bytes))
    for agency in cfg.agencies:
        lines += _table("[agencies]", _items(agency))
    for rule in cfg.allow:
        lines += _table("[allow]", {"name": rule.name, "from": rule.senders, "to": rule.recipients})
    return "\n".join(lines)


def write_hub_toml(cfg: HubConfig, path: Path) -> Path:
    """Write cfg to path as a hub config file, after checking the file reads back as cfg; returns path."""
    text = hub_toml(cfg)
    back = parse(text, str(path), path.parent)
    if back != cfg:
        differ = [f.name for f in dataclasses.fields(cfg) if getattr(back, f.name) != getattr(cfg, f.name)]
        raise ValueError(f"the hub config file would not say what the HubConfig says: {', '.join(differ)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
