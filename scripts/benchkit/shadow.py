"""A stand-in for the AWS IoT Device Shadow service: the shadow document rules (`ShadowService`)
and a responder that plays them over Mosquitto (`ShadowResponder`).

Follows the service's documented behaviour: updates merge (null deletes), every accepted update
increments the version, `update/delta` carries every desired key that differs from reported,
accepted/rejected replies echo the clientToken, errors are `{code, message, timestamp}`.
Imports the SDK only through `tracker.link.uplink`.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from typing import Any

from tracker.core.config import AwsConfig
from tracker.core.events import Event, Inbound, LinkUp

Message = tuple[str, bytes]
MAX_DEPTH = 6  # levels inside desired or reported
MAX_SECTION_BYTES = 8 * 1024  # desired and reported are each limited to 8 KB
TOPIC_RE = re.compile(
    r"\$aws/things/(?P<thing>[^/]+)/shadow(?:/name/(?P<name>[^/]+))?/(?P<op>get|update|delete)"
)


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, but 50 is 50.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def delta_of(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """Every desired attribute missing from reported or different from it, nested objects too."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = delta_of(want, have)
            if sub:
                out[key] = sub
        elif key not in reported or not _same(want, have):
            out[key] = want
    return out


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict):
            node = into.get(key)
            if not isinstance(node, dict):
                node = into[key] = {}
            _merge(node, value)
            if not node:
                del into[key]
        else:
            into[key] = value


def _stamp(value: Any, ts: int) -> Any:
    if isinstance(value, dict):
        return {k: _stamp(v, ts) for k, v in value.items()}
    return {"timestamp": ts}


def _touches(update: Any, delta: dict[str, Any]) -> bool:
    if not isinstance(update, dict):
        return False
    for key, value in update.items():
        if key in delta and (
            not isinstance(value, dict)
            or not isinstance(delta[key], dict)
            or _touches(value, delta[key])
        ):
            return True
    return False


class ShadowService:
    """One thing's shadows (classic and named) with the service's rules; no I/O."""

    def __init__(self, thing: str) -> None:
        self.thing = thing
        self.shadows: dict[str | None, dict[str, Any]] = {}
        self.versions: dict[str | None, int] = {}  # kept after a delete, as the service does
        self.requests: list[Message] = []
        self.lock = threading.Lock()

    def prefix(self, name: str | None) -> str:
        base = f"$aws/things/{self.thing}/shadow"
        return base if name is None else f"{base}/name/{name}"

    def document(self, name: str | None = None) -> dict[str, Any]:
        """A copy of the stored shadow: {"state": {"desired", "reported"}, "version"} or {}."""
        with self.lock:
            return copy.deepcopy(self.shadows.get(name, {}))

    def handle(self, topic: str, payload: bytes) -> list[Message]:
        """One request published by a client -> the messages the service publishes."""
        m = TOPIC_RE.fullmatch(topic)
        if m is None or m["thing"] != self.thing:
            return []
        name, op = m["name"], m["op"]
        with self.lock:
            self.requests.append((topic, payload))
            token = None
            try:
                doc = json.loads(payload) if payload.strip() else {}
                if not isinstance(doc, dict):
                    raise Refused(400, "Invalid JSON")
                token = doc.get("clientToken")
                if token is not None and (not isinstance(token, str) or len(token) > 64):
                    token = None
                    raise Refused(400, "Invalid clientToken")
                if op == "get":
                    return self._get(name, token)
                if op == "delete":
                    return self._delete(name, token)
                return self._update(name, doc, token, via_mqtt=True)
            except Refused as r:
                return [self._error(name, op, r, token)]
            except (ValueError, RecursionError):
                return [self._error(name, op, Refused(400, "Invalid JSON"), token)]

    def update(self, state: dict[str, Any], name: str | None = None) -> list[Message]:
        """UpdateThingShadow over HTTPS (the operator, the CLI): the MQTT side effects."""
        with self.lock:
            return self._update(name, {"state": state}, None, via_mqtt=False)

    # ---- the operations -----------------------------------------------------------------------
    def _error(self, name: str | None, op: str, r: Refused, token: Any) -> Message:
        body: dict[str, Any] = {"code": r.code, "message": r.message, "timestamp": _now()}
        if token is not None:
            body["clientToken"] = token
        return (f"{self.prefix(name)}/{op}/rejected", _dump(body))

    def _get(self, name: str | None, token: str | None) -> list[Message]:
        shadow = self.shadows.get(name)
        if shadow is None:
            raise Refused(
                404,
                f"No shadow exists with name: '{self.thing}'"
                if name is None
                else f"No shadow exists with name: '{name}'",
            )
        state = copy.deepcopy(shadow["state"])
        delta = delta_of(state.get("desired", {}), state.get("reported", {}))
        if delta:
            state["delta"] = delta
        body = {
            "state": state,
            "metadata": copy.deepcopy(shadow["metadata"]),
            "version": shadow["version"],
            "timestamp": _now(),
        }
        if token is not None:
            body["clientToken"] = token
        return [(f"{self.prefix(name)}/get/accepted", _dump(body))]

    def _delete(self, name: str | None, token: str | None) -> list[Message]:
        if name not in self.shadows:
            raise Refused(404, f"No shadow exists with name: '{name or self.thing}'")
        version = self.shadows.pop(name)["version"]
        body: dict[str, Any] = {"version": version, "timestamp": _now()}
        if token is not None:
            body["clientToken"] = token
        return [(f"{self.prefix(name)}/delete/accepted", _dump(body))]

    def _update(
        self, name: str | None, doc: dict[str, Any], token: str | None, via_mqtt: bool
    ) -> list[Message]:
        state = doc.get("state")
        if "state" not in doc:
            raise Refused(400, "Missing required node: state")
        if not isinstance(state, dict):
            raise Refused(400, "State node must be an object")
        if set(state) - {"desired", "reported"}:
            raise Refused(400, "State contains an invalid node")
        for part in ("desired", "reported"):
            if part in state and state[part] is not None and not isinstance(state[part], dict):
                raise Refused(400, f"{part.capitalize()} node must be an object")
            if _depth(state.get(part)) > MAX_DEPTH:
                raise Refused(
                    400, f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"
                )
        current = self.shadows.get(name)
        version = self.versions.get(name, 0)
        if "version" in doc and doc["version"] != version:
            raise Refused(409, "Version conflict")
        previous = copy.deepcopy(current) if current else None
        shadow = copy.deepcopy(current) if current else {"state": {}, "metadata": {}}
        ts = _now()
        for part in ("desired", "reported"):
            if part not in state:
                continue
            if state[part] is None:
                shadow["state"].pop(part, None)
                shadow["metadata"].pop(part, None)
                continue
            section = shadow["state"].setdefault(part, {})
            _merge(section, state[part])
            _merge(shadow["metadata"].setdefault(part, {}), _stamp(state[part], ts))
            if len(_dump(section)) > MAX_SECTION_BYTES:
                raise Refused(413, "The payload exceeds the maximum size allowed")
            if not section:
                del shadow["state"][part]
        shadow["version"] = version + 1
        self.versions[name] = version + 1
        self.shadows[name] = shadow
        prefix, out = self.prefix(name), []
        if via_mqtt:
            accepted = {
                "state": state,
                "metadata": {p: _stamp(state[p], ts) for p in state if isinstance(state[p], dict)},
                "version": shadow["version"],
                "timestamp": ts,
            }
            if token is not None:
                accepted["clientToken"] = token
            out.append((f"{prefix}/update/accepted", _dump(accepted)))
        desired = shadow["state"].get("desired", {})
        delta = delta_of(desired, shadow["state"].get("reported", {}))
        if delta and (
            isinstance(state.get("desired"), dict) or _touches(state.get("reported"), delta)
        ):
            body = {
                "version": shadow["version"],
                "timestamp": ts,
                "state": delta,
                "metadata": _stamp(delta, ts),
            }
            if token is not None:
                body["clientToken"] = token
            out.append((f"{prefix}/update/delta", _dump(body)))
        documents: dict[str, Any] = {
            "previous": _doc_view(previous),
            "current": _doc_view(shadow),
            "timestamp": ts,
        }
        if token is not None:
            documents["clientToken"] = token
        out.append((f"{prefix}/update/documents", _dump(documents)))
        return out


def _doc_view(shadow: dict[str, Any] | None) -> dict[str, Any] | None:
    if shadow is None:
        return None
    return {"state": shadow["state"], "metadata": shadow["metadata"], "version": shadow["version"]}


def _now() -> int:
    return int(time.time())  # the service's own timestamps; nothing on the device decides by them


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class ShadowResponder:
    """`ShadowService` over a real broker: a cloud-side MQTT client that answers shadow requests."""

    def __init__(
        self,
        aws: AwsConfig,
        client_id: str,
        thing: str,
        shadow_names: tuple[str | None, ...] = (None,),
    ) -> None:
        from tracker.link.uplink import Uplink

        self.service = ShadowService(thing)
        self._probe = f"test/shadow-responder/{client_id}/ready"
        self._ready = threading.Event()
        self.uplink = Uplink(aws, client_id, self._on_event, reconnect_max_s=2.0)
        for name in shadow_names:
            for op in ("get", "update", "delete"):
                self.uplink.subscribe(f"{self.service.prefix(name)}/{op}")
        self.uplink.subscribe(self._probe)

    def _on_event(self, event: Event) -> None:
        # runs on the SDK's thread: publish is non-blocking, the service's lock is held briefly
        if isinstance(event, LinkUp):
            self.uplink.publish(self._probe, b"ready")
        elif isinstance(event, Inbound):
            if event.topic == self._probe:
                self._ready.set()
                return
            for topic, payload in self.service.handle(event.topic, event.payload):
                self.uplink.publish(topic, payload)

    def start(self, timeout: float = 10.0) -> None:
        """Connect; returns once a message has gone round through its own subscriptions."""
        self.uplink.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("shadow responder did not get its subscriptions in time")

    def update_desired(self, desired: dict[str, Any], name: str | None = None) -> None:
        """What `aws iot-data update-thing-shadow` with a desired state does."""
        for topic, payload in self.service.update({"desired": desired}, name):
            self.uplink.publish(topic, payload)

    def document(self, name: str | None = None) -> dict[str, Any]:
        return self.service.document(name)

    def stop(self) -> None:
        self.uplink.stop()

    def __enter__(self) -> ShadowResponder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
