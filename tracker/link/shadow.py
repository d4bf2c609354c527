"""Remote configuration through the AWS IoT Device Shadow: the shadow's JSON protocol spoken over
the uplink's publish/subscribe. Pure: messages in; messages to publish and a new Config out.

Must not import awsiot, awscrt or sqlite3 (only `tracker.link.uplink` talks to the SDK); the
settings file goes through `tracker.link.remote_settings`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker import __version__
from tracker.core.config import THING_NAME_RE, Config
from tracker.core.errors import ConfigError
from tracker.core.limits import MAX_PAYLOAD
from tracker.link.remote_settings import (
    apply_saved,
    clip,
    evaluate,
    in_force,
    load_reported_digest,
    printable,
    save_persisted,
    save_reported_digest,
)

log = logging.getLogger("tracker.link.shadow")

SHADOW_NAME_RE = re.compile(r"[A-Za-z0-9:_-]{1,64}")
MAX_DEPTH = 32  # the shadow service allows 8 levels of state; metadata and wrappers add a few
REPORT_LIMIT = 8 * 1024  # the shadow service's limit for one state document
MAX_ERRORS = 10  # config_errors entries reported; one more line says how many were left out
STATUS_KEYS = 16
STATUS_TEXT = 64
Message = tuple[str, bytes]
# Not update/accepted: the service sends it for every report, with the whole reported state and
# a timestamp per key (about three times the report), and nothing in it is needed: the PUBACK
# says the report arrived, and a refusal comes on update/rejected.
TOPICS = ("get/accepted", "get/rejected", "update/delta", "update/rejected")
REPORT_ONLY = frozenset({"software", "status", "config_errors"})  # copied into desired: not asks


def shadow_prefix(thing_name: str, shadow_name: str | None = None) -> str:
    """`$aws/things/THING/shadow` (classic) or `.../shadow/name/NAME` (named)."""
    if not THING_NAME_RE.fullmatch(thing_name):
        raise ConfigError(f"thing name {thing_name!r} is invalid: use 1-128 of A-Z a-z 0-9 : _ -")
    prefix = f"$aws/things/{thing_name}/shadow"
    if shadow_name is None:
        return prefix
    if not SHADOW_NAME_RE.fullmatch(shadow_name) or shadow_name.startswith("$"):
        raise ConfigError(f"shadow name {shadow_name!r} is invalid: use 1-64 of A-Z a-z 0-9 : _ -")
    return f"{prefix}/name/{shadow_name}"


@dataclass(frozen=True)
class ShadowResult:
    """What one inbound shadow message asks of the daemon."""

    publish: list[Message] = field(default_factory=list)  # hand each to Uplink.publish
    config: Config | None = None  # the new config to apply now (None: nothing changed)
    applied: dict[str, Any] = field(default_factory=dict)  # "policy.distance_m" -> 50
    rejected: dict[str, str] = field(default_factory=dict)  # "policy.distance_m" -> reason
    ignored: str = ""  # why the message changed nothing (stale, not ours, malformed)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(payload: bytes) -> dict[str, Any]:
    """A shadow message as a JSON object; ValueError for anything else (never another error)."""
    if len(payload) > MAX_PAYLOAD:  # anything bigger is not the shadow
        raise ValueError(f"{len(payload)} bytes is more than the {MAX_PAYLOAD} a message can be")
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if _depth(doc) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return doc


def _depth(doc: Any) -> int:
    """How deeply objects and arrays nest in `doc` (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


MAX_VERSION = 2**53  # the service counts one per update: a larger version is forged or broken
MAX_LOGGED_KEYS = 5  # refused keys named in one log line; the rest are counted


def _version(doc: Mapping[str, Any]) -> int | None:
    v = doc.get("version")
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_VERSION
    return v if ok else None


def _scalar(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, (bool, int)):
        return True, value
    if isinstance(value, float):
        return math.isfinite(value), round(value, 3)
    if isinstance(value, str):
        return True, clip(value, STATUS_TEXT)
    return False, None


# Status fields that change at every report: a change in them alone is not worth a shadow update
# (each costs an update and its accepted reply on the link); the next report carries them.
VOLATILE_STATUS = frozenset({"last_fix_age_s", "budget_bytes", "budget_messages"})


def _steady(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {k: v for k, v in status.items() if k not in VOLATILE_STATUS}


def small_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status summary cut to size: 16 keys, scalars or one level of scalars, short strings."""
    out: dict[str, Any] = {}
    for key, value in list(status.items())[:STATUS_KEYS]:
        name = clip(str(key), 32)
        if isinstance(value, Mapping):
            inner = {}
            for k, v in list(value.items())[:STATUS_KEYS]:
                ok, v = _scalar(v)
                if ok:
                    inner[clip(str(k), 32)] = v
            out[name] = inner
        else:
            ok, value = _scalar(value)
            if ok:
                out[name] = value
    return out


def _differs(target: Mapping[str, Any], reported: Any) -> bool:
    """True when the shadow's reported state lacks or contradicts part of `target`."""
    if not isinstance(reported, Mapping):
        return True
    for key, value in target.items():
        have = reported.get(key)
        if isinstance(value, Mapping):
            if _differs(value, have):
                return True
        elif have != value or isinstance(have, bool) != isinstance(value, bool):
            return True
    return False


def _without_status(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report's settings part: all but the status summary."""
    return {k: v for k, v in report.items() if k != "status"}


def _digest(report: Mapping[str, Any]) -> str:
    """SHA-256 of a report's settings part, key order aside."""
    text = json.dumps(
        _without_status(report), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path, value in flat.items():
        section, name = path.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


class ShadowSync:
    """Keeps the settings in force in step with the device's shadow; owned by the daemon's loop.

    The loop subscribes to `topics()` before the uplink starts, passes every LinkUp, LinkDown and
    Inbound on those topics here, publishes what comes back and applies `ShadowResult.config`.
    """

    def __init__(
        self,
        thing_name: str,
        cfg: Config,
        store_path: str | os.PathLike[str],
        *,
        shadow_name: str | None = None,
        software: str = __version__,
        token_prefix: str | None = None,
    ) -> None:
        self.prefix = shadow_prefix(thing_name, shadow_name)
        self.store_path = Path(store_path)
        self.software = software
        # the config in force, and the settings set remotely so far ({section: {key: value}})
        self.config, self._remote = apply_saved(cfg, self.store_path)
        self._errors: dict[str, str] = {}  # refusals of the last desired state looked at
        self._version: int | None = None  # highest shadow version acted on this connection
        self._get_token: str | None = None
        self._update_tokens: deque[str] = deque(maxlen=32)
        self._online = False
        self._status: dict[str, Any] | None = None
        self._status_sent: dict[str, Any] | None = None
        self._nonce = token_prefix or secrets.token_hex(4)
        self._count = itertools.count(1)
        self.reports = 0  # reports published
        # digest of the settings part of the last report (persisted): a connection whose
        # settings are what the shadow was last told makes no report, only the get
        self._reported_digest = load_reported_digest(self.store_path)
        self._reported_after_get = False  # this connection's get was followed by a full report
        self.reports_rejected = 0
        self.save_failures = 0

    # ---- what the daemon calls ----------------------------------------------------------------
    def topics(self) -> list[str]:
        """The reply and delta topics to subscribe to (no wildcards, as AWS recommends)."""
        return [f"{self.prefix}/{t}" for t in TOPICS]

    def on_connected(self) -> list[Message]:
        """On LinkUp: ask for the whole shadow, then report the settings in force unless they
        are what the shadow was last told (before a reconnect or a reboot). The get goes first,
        so that its reply is the small "no shadow" one for a new device rather than the whole
        new report echoed with its metadata. Without a report, the reply puts right a reported
        state that differs (deleted or edited in the cloud, a report lost)."""
        self._online = True
        self._version = None  # a shadow deleted and recreated restarts its versions
        out = self.request_shadow()
        target = self._full_reported()
        self._reported_after_get = _digest(target) != self._reported_digest
        if self._reported_after_get:
            out.append(self._report(target))
        return out

    @property
    def synced(self) -> bool:
        """Online, and this connection's get has been answered (its reply applied)."""
        return self._online and self._get_token is None

    def on_disconnected(self) -> None:
        """On LinkDown: replies to requests made so far will not come."""
        self._online = False
        self._get_token = None

    def request_shadow(self) -> list[Message]:
        """A get request; its reply applies the whole desired state."""
        self._get_token = self._token()
        return [(f"{self.prefix}/get", self._dump({"clientToken": self._get_token}))]

    def report_status(self, status: Mapping[str, Any]) -> list[Message]:
        """Put a small status summary in `reported.status` (only when it changed and online)."""
        self._status = small_status(status)
        if not self._online or _steady(self._status) == _steady(self._status_sent):
            return []
        return [self._report({"status": self._status})]

    def on_message(self, topic: str, payload: bytes) -> ShadowResult:
        """Handle one inbound message; never raises, whatever the payload."""
        if not topic.startswith(self.prefix + "/") or topic[len(self.prefix) + 1 :] not in TOPICS:
            log.debug("message on unexpected topic %s ignored", topic)
            return ShadowResult(ignored="not one of this shadow's topics")
        kind = topic[len(self.prefix) + 1 :]
        try:
            doc = parse(payload)
        except ValueError as exc:
            log.warning("shadow %s message ignored: %s", kind, exc)
            return ShadowResult(ignored=f"malformed: {exc}")
        try:
            return self._dispatch(kind, doc)
        except Exception:  # a bug must not stop the loop that owns the spool and the GPS
            log.exception("shadow %s message could not be handled", kind)
            return ShadowResult(ignored="internal error")

    # ---- internals ----------------------------------------------------------------------------
    def _dispatch(self, kind: str, doc: dict[str, Any]) -> ShadowResult:
        token, version = doc.get("clientToken"), _version(doc)
        if kind == "update/delta":
            if version is None or not isinstance(doc.get("state"), dict):
                return self._ignore(kind, "no version or state")
            if self._version is not None and version <= self._version:
                return self._ignore(kind, f"stale version {version} <= {self._version}")
            return self._apply(doc["state"], version, None)
        if kind == "get/accepted":
            if self._get_token is None or token != self._get_token:
                return self._ignore(kind, "reply to another request")
            self._get_token = None
            state = doc.get("state", {})
            if version is None or not isinstance(state, dict):
                return self._ignore(kind, "no version or state")
            if self._version is not None and version < self._version:
                return self._ignore(kind, f"stale version {version} < {self._version}")
            return self._apply(state.get("desired", {}), version, state.get("reported", {}))
        raw_code = doc.get("code")
        code = clip(printable(str(raw_code)), 16)
        message = clip(printable(str(doc.get("message", ""))), 200)
        if kind == "get/rejected":
            if self._get_token is None or token != self._get_token:
                return self._ignore(kind, "reply to another request")
            self._get_token = None
            if raw_code == 404:  # no shadow yet: our report creates it (or already has)
                if self._reported_after_get:
                    return ShadowResult()
                return ShadowResult(publish=[self._report(self._full_reported())])
            log.warning("shadow get rejected: %s %s", code, message)
            return ShadowResult(ignored=f"get rejected: {code} {message}")
        if not isinstance(token, str) or token not in self._update_tokens:
            return self._ignore(kind, "reply to another client's update")
        self._update_tokens.remove(token)
        self.reports_rejected += 1
        log.warning("shadow report rejected: %s %s", code, message)
        return ShadowResult(ignored=f"report rejected: {code} {message}")

    def _ignore(self, kind: str, why: str) -> ShadowResult:
        log.debug("shadow %s ignored: %s", kind, why)
        return ShadowResult(ignored=why)

    def _apply(self, desired: Any, version: int, reported: Any) -> ShadowResult:
        """Apply a desired state (a delta, or the whole desired state when `reported` is given)."""
        if isinstance(desired, Mapping):
            desired = {k: v for k, v in desired.items() if k not in REPORT_ONLY}
        change = evaluate(self.config, desired)
        if change.accepted or reported is not None:
            # a delta that brought nothing usable does not move the version: a forged or broken
            # one with a huge version cannot make the real ones look stale
            self._version = version if self._version is None else max(version, self._version)
        errors_changed = change.rejected != self._errors
        self._errors = change.rejected
        if change.applied:
            self.config = change.config
            for section, values in _nest(change.applied).items():
                self._remote.setdefault(section, {}).update(values)
            try:
                save_persisted(self.store_path, self._remote)
            except OSError as exc:  # applies now; the shadow sends it again after a reboot
                self.save_failures += 1
                log.error("remote settings applied but not saved to %s: %s", self.store_path, exc)
            log.info(
                "remote settings applied (shadow version %d): %s",
                version,
                ", ".join(f"{k}={v}" for k, v in change.applied.items()),
            )
        if errors_changed and change.rejected:
            items = list(change.rejected.items())
            more = len(items) - MAX_LOGGED_KEYS
            log.warning(
                "remote settings refused: %s%s",
                "; ".join(f"{clip(k, 40)}: {v}" for k, v in items[:MAX_LOGGED_KEYS]),
                f"; and {more} more" if more > 0 else "",
            )
        publish: list[Message] = []
        if reported is not None:
            target = self._full_reported()
            # the status summary is left out of the comparison: it is reported when it changes
            # a report sent right after the get already puts right what the reply shows
            if not self._reported_after_get and _differs(_without_status(target), reported):
                publish.append(self._report(target))
        else:
            # every key taken as asked, changed or not: a stale reported value is put right too
            now = in_force(self.config)
            fragment: dict[str, Any] = {}
            for path in sorted(change.accepted):
                section, _, name = path.partition(".")
                fragment.setdefault(section, {})[name] = now[section][name]
            if errors_changed:
                fragment["config_errors"] = self._errors_list()
            if fragment:
                publish.append(self._report(fragment))
        return ShadowResult(
            publish, self.config if change.applied else None, change.applied, change.rejected
        )

    def _errors_list(self) -> list[dict[str, str]]:
        # an array, because the shadow replaces arrays whole: no stale entries to delete
        items = sorted(self._errors.items())
        out = [{"key": k, "reason": v} for k, v in items[:MAX_ERRORS]]
        if len(items) > MAX_ERRORS:
            out.append({"key": "...", "reason": f"{len(items) - MAX_ERRORS} more refused"})
        return out

    def _full_reported(self) -> dict[str, Any]:
        reported: dict[str, Any] = {
            **in_force(self.config),
            "software": self.software,
            "config_errors": self._errors_list(),
        }
        if self._status is not None:
            reported["status"] = self._status
        return reported

    def _report(self, reported: dict[str, Any]) -> Message:
        token = self._token()
        doc = {"state": {"reported": reported}, "clientToken": token}
        payload = self._dump(doc)
        if len(payload) > REPORT_LIMIT and "status" in reported:
            log.warning(
                "shadow status summary left out: the report would exceed %d bytes", REPORT_LIMIT
            )
            reported = _without_status(reported)
            payload = self._dump({"state": {"reported": reported}, "clientToken": token})
        if "status" in reported:
            self._status_sent = reported["status"]
        if set(reported) - {"status"}:
            # the shadow's settings part is now what is in force (a full report, or the keys
            # that changed): remembered, so that the next connection need not repeat it
            digest = _digest(self._full_reported())
            if digest != self._reported_digest:
                self._reported_digest = digest
                save_reported_digest(self.store_path, digest)
        self.reports += 1
        self._update_tokens.append(token)
        return (f"{self.prefix}/update", payload)

    def _token(self) -> str:
        return f"{self._nonce}-{next(self._count)}"

    @staticmethod
    def _dump(doc: Mapping[str, Any]) -> bytes:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
