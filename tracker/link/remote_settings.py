"""The remotely settable keys: their table (from the config metadata), validation of a change,
and the on-device file that keeps the last applied remote settings across reboots.

Standard library and `tracker.core.config` only; must not import awsiot, awscrt or sqlite3.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker.core import config as config_mod
from tracker.core.config import Config
from tracker.core.errors import ConfigError
from tracker.core.files import atomic_write

log = logging.getLogger("tracker.settings")

STORE_NAME = "remote-settings.json"  # kept next to the spool
STORE_FORMAT = 1
MAX_STORE_BYTES = 64 * 1024
MAX_ITEMS = 200  # keys looked at in one change; the rest are refused unread
KEY_CLIP = 64  # longest key name echoed back in a rejection
REASON_CLIP = 160


@dataclass(frozen=True)
class RemoteKey:
    """One remotely settable key: where it lives and what it accepts."""

    section: str
    name: str
    field: dataclasses.Field[Any]

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def unit(self) -> str:
        return str(self.field.metadata["unit"])

    @property
    def default(self) -> Any:
        return self.field.default


def remote_keys() -> list[RemoteKey]:
    """Every key marked `remote=True` in the config metadata, in file order."""
    keys = []
    for section, cls in config_mod.SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("remote"):
                keys.append(RemoteKey(section, f.name, f))
    return keys


REMOTE: dict[str, RemoteKey] = {k.path: k for k in remote_keys()}
SECTIONS = sorted({k.section for k in REMOTE.values()})


def _num(value: Any) -> Any:
    """Numbers as a person writes them (50, not 50.0), so desired 50 equals reported 50."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def settings_table() -> str:
    """The README's Markdown table of remotely settable keys: unit, default, bounds, meaning."""
    rows = ["| key | unit | default | allowed | what it does |", "|---|---|---|---|---|"]
    for k in REMOTE.values():
        lo, hi = k.field.metadata["lo"], k.field.metadata["hi"]
        bounds = f"{_num(lo)} to {_num(hi)}" if lo is not None and hi is not None else "any"
        if k.field.metadata.get("least") is not None:
            bounds = f"0 or {_num(k.field.metadata['least'][0])} to {_num(hi)}"
        kind = "whole number" if type(k.default) is int else "number"
        rows.append(
            f"| `{k.path}` | {k.unit or '-'} | {_num(k.default)} | {bounds} ({kind}) "
            f"| {k.field.metadata['doc'].replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def in_force(cfg: Config) -> dict[str, dict[str, Any]]:
    """The values of every remotely settable key in `cfg`, as a shadow `reported` fragment."""
    out: dict[str, dict[str, Any]] = {}
    for k in REMOTE.values():
        out.setdefault(k.section, {})[k.name] = _num(getattr(getattr(cfg, k.section), k.name))
    return out


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(text: str) -> str:
    """`text` with control characters (newlines, NUL, escapes) shown as `?`: one log line."""
    return config_mod.CONTROL_RE.sub("?", text)


def clip_key(text: str) -> str:
    """A key name cut to size, keeping its end too so that long names stay apart; printable."""
    text = printable(text)
    return text if len(text) <= KEY_CLIP else f"{text[: KEY_CLIP - 21]}…{text[-20:]}"


def _kind_name(value: Any) -> str:
    if value is None:
        return "null"
    return "an object" if isinstance(value, Mapping) else "an array"


def check_remote(key: RemoteKey, value: Any) -> Any:
    """Validate one remote value (type, unit, bounds); return it converted or raise ConfigError."""
    if value is None or isinstance(value, (Mapping, list)):
        raise ConfigError(f"[{key.section}] {key.name} must be a number, not {_kind_name(value)}")
    if isinstance(value, str):
        value = clip(value, 24)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"[{key.section}] {key.name} must be a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        raise ConfigError(f"[{key.section}] {key.name} = {clip(str(value), 24)} is out of range")
    return config_mod.check_value(key.section, key.field, value)


def silencing_problems(cfg: Config) -> list[tuple[frozenset[str], str]]:
    """Combinations that would leave the device silent: (keys involved, why). The config file's
    own pair rules (`config.pair_problems`), and what only a remote change could break."""
    p = cfg.policy
    out = [(keys, f"refused: {why}") for keys, why in config_mod.pair_problems(p)]
    spool_span = cfg.spool.max_fixes * p.min_interval_s
    if p.heartbeat_s > spool_span:
        out.append(
            (
                frozenset({"policy.heartbeat_s", "policy.min_interval_s"}),
                f"refused: heartbeat_s {_num(p.heartbeat_s)} s is longer than the spool "
                f"holds ({cfg.spool.max_fixes} fixes x min_interval_s "
                f"{_num(p.min_interval_s)} s = {_num(spool_span)} s)",
            )
        )
    return out


@dataclass(frozen=True)
class Change:
    """The outcome of a desired change: what applies, what was refused and why."""

    config: Config  # the config with every accepted value applied
    applied: dict[str, Any]  # "section.key" -> new value, only keys whose value changed
    rejected: dict[str, str]  # "section.key" (or section) -> one-line reason
    accepted: frozenset[str] = frozenset()  # every key now in force as asked, changed or not


def _with(cfg: Config, values: Mapping[str, Any]) -> Config:
    sections: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        section, name = path.split(".", 1)
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()}
    )


def evaluate(cfg: Config, desired: Any) -> Change:
    """Validate every key of a desired `{section: {key: value}}` document against `cfg`.

    Each key stands alone: bad ones are refused with a reason, the others apply. Keys whose
    combination would silence the device are refused too. Never raises on any JSON input.
    """
    rejected: dict[str, str] = {}
    wanted: dict[str, Any] = {}
    if not isinstance(desired, Mapping):
        return Change(cfg, {}, {"desired": "must be an object of sections"})
    valid: set[str] = set()
    seen = 0
    for section, body in desired.items():
        seen += 1
        if seen > MAX_ITEMS:
            rejected["desired"] = f"too many keys; at most {MAX_ITEMS} are read"
            break
        sname = clip_key(str(section))
        if section not in SECTIONS:
            rejected[sname] = (
                f"unknown section or not settable remotely; remote sections: {', '.join(SECTIONS)}"
            )
            continue
        if not isinstance(body, Mapping):
            rejected[sname] = "must be an object of settings"
            continue
        for name, value in body.items():
            seen += 1
            path = f"{sname}.{clip_key(str(name))}"
            if seen > MAX_ITEMS:
                rejected["desired"] = f"too many keys; at most {MAX_ITEMS} are read"
                break
            key = REMOTE.get(f"{section}.{name}")
            if key is None:
                fields = {f.name for f in dataclasses.fields(config_mod.SECTION_TYPES[section])}
                rejected[path] = (
                    "can only be set in the config file on the device"
                    if name in fields
                    else "unknown key"
                )
                continue
            try:
                value = check_remote(key, value)
            except ConfigError as exc:
                rejected[path] = clip(str(exc), REASON_CLIP)
                continue
            valid.add(path)
            if value != getattr(getattr(cfg, section), name):
                wanted[path] = value
    while True:  # drop changed keys that take part in a silencing combination
        candidate = _with(cfg, wanted)
        problems = [(keys & wanted.keys(), why) for keys, why in silencing_problems(candidate)]
        problems = [(keys, why) for keys, why in problems if keys]
        if not problems:
            break
        for keys, why in problems:
            for path in keys:
                rejected[path] = why
                wanted.pop(path, None)
    try:
        config_mod.validate(candidate)
    except ConfigError as exc:  # a rule only the loader knows: keep the config in force
        return Change(cfg, {}, {**rejected, **{p: str(exc) for p in wanted}})
    return Change(
        candidate,
        {p: _num(v) for p, v in wanted.items()},
        rejected,
        frozenset(valid - rejected.keys()),
    )


# ---- persistence -------------------------------------------------------------------------------


def apply_saved(
    cfg: Config, store_path: str | os.PathLike[str]
) -> tuple[Config, dict[str, dict[str, Any]]]:
    """The config in force, at start and on reload: the file's `cfg` with the saved remote
    settings that still pass applied on top (each one refused is logged); and those settings."""
    remote = load_persisted(store_path)
    change = evaluate(cfg, remote)
    for path, why in change.rejected.items():
        log.warning("saved remote setting %s not applied: %s", path, why)
    return change.config, remote


def default_store_path(cfg: Config) -> Path:
    """Where the remote settings live: next to the spool, on the same persistent filesystem."""
    return Path(cfg.spool.path).parent / STORE_NAME


def load_persisted(store_path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The last applied remote settings, as config overrides `{section: {key: value}}`.

    A missing file is no settings; an unreadable or damaged one is logged and ignored (the shadow
    sends the settings again on the next connection). Each value is validated again.
    """
    path = Path(store_path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_STORE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("remote settings %s unreadable, using the config file: %s", path, exc)
        return {}
    try:
        if len(raw) > MAX_STORE_BYTES:
            raise ValueError("file too large")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT:
            raise ValueError(f"not a format {STORE_FORMAT} settings file")
        settings = doc.get("settings")
        if not isinstance(settings, dict):
            raise ValueError("no settings object")
    except (ValueError, RecursionError) as exc:
        log.warning("remote settings %s damaged, using the config file: %s", path, exc)
        return {}
    out: dict[str, dict[str, Any]] = {}
    for section, body in settings.items():
        for name, value in body.items() if isinstance(body, dict) else ():
            key = REMOTE.get(f"{section}.{name}")
            try:
                if key is None:
                    raise ConfigError(f"{section}.{name} is not remotely settable (any more)")
                out.setdefault(section, {})[name] = check_remote(key, value)
            except ConfigError as exc:
                log.warning("remote setting dropped from %s: %s", path, exc)
    return out


def save_persisted(
    store_path: str | os.PathLike[str], settings: Mapping[str, Mapping[str, Any]]
) -> None:
    """Write the remote settings atomically: temp file, fsync, rename, fsync the directory."""
    path = Path(store_path)
    doc = {
        "format": STORE_FORMAT,
        "settings": {
            s: {k: _num(v) for k, v in sorted(body.items())}
            for s, body in sorted(settings.items())
            if body
        },
    }
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def reported_path(store_path: str | os.PathLike[str]) -> Path:
    """Beside the settings file: the digest of the last full report made to the shadow."""
    path = Path(store_path)
    return path.with_name(path.name + ".reported")


def load_reported_digest(store_path: str | os.PathLike[str]) -> str | None:
    """The digest saved by `save_reported_digest`, or None (missing, unreadable or damaged:
    the device then reports in full on its next connection, which is always safe)."""
    try:
        text = reported_path(store_path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def save_reported_digest(store_path: str | os.PathLike[str], digest: str) -> None:
    """Written atomically; a failure only costs a full report on the next connection."""
    path = reported_path(store_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (digest + "\n").encode())
    except OSError as exc:
        log.warning("shadow report digest not saved to %s: %s", path, exc)


def apply_persisted(cfg: Config, store_path: str | os.PathLike[str]) -> Config:
    """`cfg` with the persisted remote settings on top; any that no longer fit are left out."""
    change = evaluate(cfg, load_persisted(store_path))
    for path, why in change.rejected.items():
        log.warning("persisted remote setting %s not applied: %s", path, why)
    return change.config
