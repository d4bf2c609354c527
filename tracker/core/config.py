"""The configuration: frozen dataclasses loaded from one TOML file and validated once at start.

Every key has a type, bounds and a doc string (field metadata), so validation, the README reference
and remote (shadow) settings share one table. Precedence: command line > environment > file >
defaults. Standard library and the codec's message size limit only; must not import the SDK or
serial.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from tracker.core.errors import ConfigError
from tracker.core.limits import MAX_PAYLOAD, MAX_TOPIC_BYTES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

THING_NAME_RE = re.compile(r"[A-Za-z0-9:_-]{1,128}")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_TOPIC_SLASHES = 7  # AWS IoT Core's limit, not counting Basic Ingest's $aws/rules/RULE/
TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
RULE_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,128}")
DEFAULT_CONFIG = "/etc/tracker/tracker.toml"


def setting(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    unit: str = "",
    remote: bool = False,
    least: tuple[float, str] | None = None,
) -> Any:
    """A config field with its documentation and bounds.

    `least` = (value, why): 0 turns the setting off, any other value must be at least `value`
    (`why` says what less would break); it holds for the file and for remote settings alike."""
    meta = {
        "doc": doc, "lo": lo, "hi": hi, "choices": choices, "unit": unit, "remote": remote,
        "least": least,
    }  # fmt: skip
    return field(default=default, metadata=meta)


REQUIRED: Any = None  # marks settings that have no default


@dataclass(frozen=True)
class DeviceConfig:
    thing_name: str = setting(REQUIRED, "AWS IoT thing name; also the MQTT client id")
    set_clock: bool = setting(
        True,
        "set an unset system clock (no RTC: 1970 at boot) from GPS time, so TLS can "
        "check certificates: directly with CAP_SYS_TIME, else through tracker-clock.service",
    )


@dataclass(frozen=True)
class AwsConfig:
    endpoint: str = setting(
        REQUIRED, "AWS IoT Core data endpoint (xxxx-ats.iot.REGION.amazonaws.com)"
    )
    port: int = setting(8883, "MQTT over TLS port", lo=1, hi=65535)
    cert: str = setting(REQUIRED, "device certificate (PEM)")
    key: str = setting(REQUIRED, "device private key (PEM, mode 0600)")
    ca: str = setting(REQUIRED, "root CA that signed the endpoint's certificate (PEM)")
    keepalive_s: int = setting(
        1200,
        "MQTT keep-alive: pings on a silent link (168 bytes each); a publish left without "
        "its PUBACK for 60 s reconnects sooner",
        lo=30,
        hi=1200,
        unit="s",
    )
    session_expiry_s: int = setting(
        604800, "how long the broker keeps the session while offline", lo=0, hi=604800, unit="s"
    )
    topic_prefix: str = setting("dt/tracker", "topics are PREFIX/THING/location and .../condition")
    basic_ingest_rule: str = setting(
        "", "publish through $aws/rules/RULE/... (no messaging charge)"
    )
    batch_bytes: int = setting(
        5120, "largest backlog message", lo=512, hi=MAX_PAYLOAD, unit="bytes", remote=True
    )
    window: int = setting(
        8, "publishes handed to the SDK at once (memory stays flat)", lo=1, hi=100
    )
    flow_control: bool = setting(True, "apply AWS IoT Core's 100 msg/s and 512 KB/s limits")
    post_quantum_tls: bool = setting(
        False,
        "offer a post-quantum hybrid key exchange (ML-KEM) in the TLS handshake: about 1.3 KB "
        "more per connection; false: TLS 1.3 (or 1.2) with classic ECDHE",
    )
    compress: bool = setting(
        True,
        "send fixes as compact batches: version 2 (deflated), or version 3 (binary) where "
        "smaller; false: v1 JSON batches and one plain JSON object per live fix, for rules that "
        "read fields",
    )

    def topic(self, thing_name: str, kind: str) -> str:
        """The topic for `kind` (location, condition) of this device."""
        base = f"{self.topic_prefix}/{thing_name}/{kind}"
        if self.basic_ingest_rule:
            return f"$aws/rules/{self.basic_ingest_rule}/{base}"
        return base


@dataclass(frozen=True)
class GpsConfig:
    url: str = setting("/dev/ttyAMA0", "serial path, replay://FILE?speed=N, or gpsd://HOST:PORT")
    baudrate: int = setting(
        9600, "serial speed; detected when no valid NMEA is seen", lo=1200, hi=921600, unit="baud"
    )
    detect_baud: bool = setting(True, "try 4800/9600/38400/115200 when the set rate shows no NMEA")
    allow_no_checksum: bool = setting(False, "accept sentences without a checksum (old receivers)")
    date_floor: str = setting(
        "",
        "dates before this (YYYY-MM-DD) are GPS week rollovers and move on by 1024 weeks; "
        "empty: the software's release date; set an old date only to replay old recordings",
    )


@dataclass(frozen=True)
class SpoolConfig:
    path: str = setting("/var/lib/tracker/spool.db", "the store-and-forward queue (SQLite file)")
    max_fixes: int = setting(500000, "fixes kept on disk at most", lo=100, hi=10_000_000)
    drop_policy: str = setting(
        "oldest", "which fix goes when the spool is full", choices=("oldest", "newest")
    )


@dataclass(frozen=True)
class PolicyConfig:
    min_interval_s: float = setting(
        5.0, "never report more often than this", lo=1, hi=3600, unit="s", remote=True
    )
    max_interval_s: float = setting(
        120.0, "report at least this often while moving", lo=5, hi=86400, unit="s", remote=True
    )
    distance_m: float = setting(
        100.0, "report after moving this far", lo=5, hi=100000, unit="m", remote=True
    )
    heading_deg: float = setting(
        30.0,
        "report on a heading change this large while moving",
        lo=5,
        hi=180,
        unit="deg",
        remote=True,
    )
    moving_speed_mps: float = setting(
        1.5, "speed above which the asset counts as moving", lo=0.2, hi=50, unit="m/s", remote=True
    )
    still_radius_m: float = setting(
        30.0,
        "wander within this radius while parked is jitter",
        lo=5,
        hi=1000,
        unit="m",
        remote=True,
    )
    still_timeout_s: float = setting(
        300.0, "still this long -> low power", lo=30, hi=86400, unit="s", remote=True
    )
    heartbeat_s: float = setting(
        7200.0, "report interval while in low power", lo=60, hi=86400, unit="s", remote=True
    )
    fix_timeout_s: float = setting(
        120.0, "give up acquiring a fix after this", lo=10, hi=3600, unit="s", remote=True
    )
    fix_backoff_s: float = setting(
        600.0,
        "wait after a fix timeout before trying again",
        lo=10,
        hi=86400,
        unit="s",
        remote=True,
    )
    settle_s: float = setting(
        3.0,
        "ignore fixes this long after the first one of a cold start",
        lo=0,
        hi=120,
        unit="s",
        remote=True,
    )
    max_hdop: float = setting(5.0, "reject fixes with a worse HDOP", lo=0.5, hi=50, remote=True)
    min_sats: int = setting(
        4, "reject fixes with fewer satellites (when the receiver says)", lo=0, hi=64, remote=True
    )
    battery_low_pct: float = setting(
        15.0, "below this battery level -> low power", lo=0, hi=100, unit="%", remote=True
    )
    battery_ok_pct: float = setting(
        25.0, "leave low power above this level", lo=0, hi=100, unit="%", remote=True
    )
    condition_interval_s: float = setting(
        900.0, "condition message period", lo=60, hi=86400, unit="s", remote=True
    )
    low_power_condition_s: float = setting(
        86400.0,
        "condition message period in low power (once due, it goes with the next heartbeat "
        "report, or on the open link when heartbeats are rarer)",
        lo=60,
        hi=604800,
        unit="s",
        remote=True,
    )
    max_delay_s: float = setting(
        60.0,
        "a fix waits at most this long to share a message with the next ones (first fix, "
        "start, stop and heartbeat go at once); 0: every fix at once",
        lo=0,
        hi=3600,
        unit="s",
        remote=True,
    )


@dataclass(frozen=True)
class BudgetConfig:
    bytes_per_day: int = setting(
        0,
        "link bytes (TCP/IP, TLS, MQTT; estimated) a GPS day (UTC) may use; fixes that do not "
        "fit wait in the spool; 0: unlimited",
        lo=0,
        hi=1_000_000_000,
        unit="bytes",
        remote=True,
        least=(20_000, "too little for one connection and its messages a day"),
    )
    messages_per_day: int = setting(
        0,
        "AWS IoT messages (5 KB blocks) a GPS day may use; 0: unlimited",
        lo=0,
        hi=10_000_000,
        remote=True,
        least=(24, "fewer than one an hour would silence the heartbeats"),
    )


@dataclass(frozen=True)
class PowerConfig:
    gps: str = setting(
        "none://", "GPS power control: none://, pmtk://, ubx://, gpio://CHIP/LINE, sim://"
    )
    close_link: bool = setting(
        False,
        "close the MQTT connection in low power, once what is in flight is acknowledged; "
        "it opens again on waking",
    )


@dataclass(frozen=True)
class SensorsConfig:
    battery: str = setting("none://", "battery gauge: none://, sysfs://NAME (power_supply), sim://")
    temperature: str = setting("none://", "temperature: none://, sysfs://thermal_zone0, sim://")
    motion: str = setting("none://", "motion interrupt: none://, gpio://CHIP/LINE, sim://")


@dataclass(frozen=True)
class LogConfig:
    level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class DebugConfig:
    clock_speed: float = setting(
        1.0,
        "run timers (and the reconnect backoff) this many times faster, for accelerated bench "
        "replays only",
        lo=1,
        hi=1000,
    )


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    aws: AwsConfig
    gps: GpsConfig = field(default_factory=GpsConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    sensors: SensorsConfig = field(default_factory=SensorsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


SECTION_TYPES: dict[str, type[Any]] = {
    "device": DeviceConfig,
    "aws": AwsConfig,
    "gps": GpsConfig,
    "spool": SpoolConfig,
    "policy": PolicyConfig,
    "budget": BudgetConfig,
    "power": PowerConfig,
    "sensors": SensorsConfig,
    "log": LogConfig,
    "debug": DebugConfig,
}


def shown(value: Any, limit: int = 40) -> str:
    """A value as an error message echoes it: its repr, cut to one short piece."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_value(section: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """Validate one value against its field's type and bounds; return it converted."""
    key = f"[{section}] {f.name}"
    default: Any = f.default
    kind: type[Any] = str if default is REQUIRED else type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {shown(value)}")
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, not {shown(value)}")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key} must be a number, not nan")
        if kind is int and not (isinstance(value, int) or float(value).is_integer()):
            raise ConfigError(f"{key} must be a whole number, not {shown(value)}")
        value = kind(value)
        lo, hi, unit = f.metadata["lo"], f.metadata["hi"], f.metadata["unit"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(
                f"{key} = {value} is out of range: allowed {lo} to {hi} {unit}".rstrip()
            )
        least = f.metadata.get("least")
        if least is not None and 0 < value < least[0]:
            raise ConfigError(
                f"{key} = {value} is below {_toml(least[0])} {unit}".rstrip()
                + f", {least[1]}: set 0 (no limit) or at least {_toml(least[0])}"
            )
    elif not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, not {shown(value)}")
    elif CONTROL_RE.search(value):
        raise ConfigError(
            f"{key} = {shown(value)} holds a control character (NUL, newline, tab...): remove it"
        )
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{key} = {shown(value)} is not one of: {', '.join(choices)}")
    return value


def build_section(name: str, cls: type[Any], raw: Any) -> Any:
    """A section's dataclass from its TOML table: each key checked, unknown and missing named."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key [{name}] {unknown[0]}; allowed: {', '.join(fields)}")
    values = {}
    for fname, f in fields.items():
        if fname in raw:
            values[fname] = check_value(name, f, raw[fname])
        elif f.default is REQUIRED:
            raise ConfigError(f"missing key [{name}] {fname}: {f.metadata['doc']}")
    return cls(**values)


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """TRACKER_SECTION_KEY=value environment variables as a nested dict (values parsed as TOML)."""
    out: dict[str, dict[str, Any]] = {}
    for var, text in environ.items():
        if not var.startswith("TRACKER_") or var == "TRACKER_CONFIG":
            continue
        rest = var[len("TRACKER_") :].lower()
        section, _, key = rest.partition("_")
        if section not in SECTION_TYPES or not key:
            continue
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare string
        out.setdefault(section, {})[key] = value
    return out


def merge(base: Mapping[str, Any], *overlays: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Overlay section dicts onto a parsed TOML document, later ones winning."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for overlay in overlays:
        for section, values in overlay.items():
            out.setdefault(section, {}).update(values)
    return out


def from_dict(doc: Mapping[str, Any]) -> Config:
    """Build and validate a Config from a TOML-shaped dict."""
    unknown = sorted(set(doc) - set(SECTION_TYPES))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; allowed: {', '.join(SECTION_TYPES)}")
    sections = {}
    for name, cls in SECTION_TYPES.items():
        sections[name] = build_section(name, cls, doc.get(name, {}))
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that span keys or need more than bounds."""
    if not THING_NAME_RE.fullmatch(cfg.device.thing_name):
        raise ConfigError(
            f"[device] thing_name {cfg.device.thing_name!r} is invalid: "
            "use 1-128 of A-Z a-z 0-9 : _ -"
        )
    if not TOPIC_PREFIX_RE.fullmatch(cfg.aws.topic_prefix) or cfg.aws.topic_prefix.startswith("$"):
        raise ConfigError(
            f"[aws] topic_prefix {cfg.aws.topic_prefix!r} is invalid: use words of "
            "A-Z a-z 0-9 _ - separated by /, no wildcards or leading $"
        )
    longest = cfg.aws.topic(cfg.device.thing_name, "condition")
    if len(longest.encode()) > MAX_TOPIC_BYTES:
        raise ConfigError(
            f"[aws] topic_prefix makes topics of {len(longest.encode())} bytes, like "
            f"{shown(longest)}; AWS IoT Core allows {MAX_TOPIC_BYTES}: shorten the prefix"
        )
    slashes = cfg.aws.topic_prefix.count("/") + 2  # PREFIX/THING/KIND
    if slashes > MAX_TOPIC_SLASHES:
        raise ConfigError(
            f"[aws] topic_prefix {cfg.aws.topic_prefix!r} has too many levels: topics would "
            f"hold {slashes} slashes, AWS IoT Core allows {MAX_TOPIC_SLASHES}; use at most "
            f"{MAX_TOPIC_SLASHES - 1} levels"
        )
    if cfg.aws.basic_ingest_rule and not RULE_NAME_RE.fullmatch(cfg.aws.basic_ingest_rule):
        raise ConfigError(
            f"[aws] basic_ingest_rule {cfg.aws.basic_ingest_rule!r} is invalid: "
            "use 1-128 of A-Z a-z 0-9 _"
        )
    if not cfg.aws.endpoint or any(c in cfg.aws.endpoint for c in "/: "):
        raise ConfigError(
            f"[aws] endpoint {cfg.aws.endpoint!r} must be a host name, without scheme or port"
        )
    if cfg.gps.date_floor:
        try:
            date.fromisoformat(cfg.gps.date_floor)
        except ValueError:
            raise ConfigError(
                f"[gps] date_floor {cfg.gps.date_floor!r} is not a date: use YYYY-MM-DD"
            ) from None
    for _, why in pair_problems(cfg.policy):
        raise ConfigError(why)


def pair_problems(p: PolicyConfig) -> list[tuple[frozenset[str], str]]:
    """The rules between two [policy] keys that the config file and a remote change both keep:
    (the "section.key" names involved, why). A remote change adds rules of its own
    (`remote_settings.silencing_problems`)."""
    out = []
    if p.min_interval_s > p.max_interval_s:
        out.append(
            (
                frozenset({"policy.min_interval_s", "policy.max_interval_s"}),
                f"[policy] min_interval_s must not exceed max_interval_s "
                f"({_toml(p.min_interval_s)} s > {_toml(p.max_interval_s)} s)",
            )
        )
    if p.battery_ok_pct < p.battery_low_pct:
        out.append(
            (
                frozenset({"policy.battery_ok_pct", "policy.battery_low_pct"}),
                f"[policy] battery_ok_pct must be at least battery_low_pct "
                f"({_toml(p.battery_ok_pct)} % < {_toml(p.battery_low_pct)} %): "
                "low power would never end",
            )
        )
    return out


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read, merge and validate the configuration; raises ConfigError naming the problem."""
    environ = os.environ if environ is None else environ
    doc = read_toml(Path(path or environ.get("TRACKER_CONFIG") or DEFAULT_CONFIG))
    doc = merge(doc, env_overrides(environ), overrides or {})
    try:
        return from_dict(doc)
    except ConfigError as exc:
        raise ConfigError(_name_env_source(str(exc), environ)) from None


def read_toml(
    file: Path,
    *,
    what: str = "config file",
    option: str = "--config",
    missing: str = "",
    unreadable: str = "",
) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError is one line naming the file (`what` it is) and the fix:
    pass another with `option`, or do `missing` first / `unreadable` (for a file this user may not
    read). The one reader of the daemon's, the collector's, `tracker check`'s and provisioning's
    TOML files."""
    other = f"pass {option} FILE"
    try:
        with file.open("rb") as fh:
            doc: dict[str, Any] = tomllib.load(fh)
            return doc
    except FileNotFoundError:
        fix = f"{missing} or {other}" if missing else other
        raise ConfigError(f"{what} {file} not found; {fix}") from None
    except PermissionError:
        fix = f"; {unreadable}" if unreadable else ""
        raise ConfigError(f"{what} {file} is not readable by this user{fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {file} is a directory; {other}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {file} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(
            f"{what} {file} is not UTF-8 text (a binary file?); pass the TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {file} is not valid TOML: {exc}") from None


def _name_env_source(message: str, environ: Mapping[str, str]) -> str:
    """The error, naming the environment variable that set the key it is about, if one did."""
    for var in environ:
        if var.startswith("TRACKER_") and var != "TRACKER_CONFIG":
            section, _, key = var[len("TRACKER_") :].lower().partition("_")
            if key and f"[{section}] {key}" in message:
                return f"{message} (set by the environment variable {var})"
    return message


def reference_markdown() -> str:
    """The README's configuration reference, generated from the field metadata above."""
    lines = []
    for name, cls in SECTION_TYPES.items():
        lines += [f"**[{name}]**", "", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            m = f.metadata
            default = "required" if f.default is REQUIRED else f"`{_toml(f.default)}`"
            if m["choices"]:
                allowed = ", ".join(f"`{c}`" for c in m["choices"])
            elif m.get("least") is not None:
                allowed = f"0 or {_toml(m['least'][0])} to {_toml(m['hi'])} {m['unit']}".rstrip()
            elif m["lo"] is not None:
                allowed = f"{_toml(m['lo'])} to {_toml(m['hi'])} {m['unit']}".rstrip()
            else:
                allowed = ""
            remote = " (remote)" if m["remote"] else ""
            lines.append(f"| `{f.name}` | {default} | {allowed} | {m['doc']}{remote} |")
        lines.append("")
    return "\n".join(lines)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)
