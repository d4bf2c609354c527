"""The local lake: the same folder layout the AWS side's Firehose writes to S3, on a local disk.

    fixes/thing=<thing>/day=<YYYY-MM-DD>/<file>.jsonl       a line per fix (UTC day of fix time)
    conditions/thing=<thing>/day=<YYYY-MM-DD>/<file>.jsonl  a line per condition message
    rejected/day=<YYYY-MM-DD>/<file>.jsonl                  undecodable payloads (the collector)

Files are append-only JSON lines; a line counts only once its newline is there (a torn last line
from a power cut is skipped by every reader). `LakeWriter` owns writing (one collector at a time,
enforced by a lock file); `read_fixes` serves `tracker export` and `tracker gaps`.
Standard library and `tracker.core.errors`, `tracker.core.files` and `tracker.core.fix` only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from tracker.core.errors import TrackerError
from tracker.core.files import fsync_dir, try_lock
from tracker.core.fix import Fix, Record, format_time, parse_time

FIX_FIELDS = ("time", "lat", "lon", "alt", "speed", "course", "mode", "sats", "hdop")
REJECTED_KEEP = 4096  # bytes of an oversized payload kept (base64) in rejected/
LOCK_NAME = ".collect.lock"


class LakeError(TrackerError):
    """The lake folder is missing, unreadable or not writable (one line, with the fix)."""


def fix_line(thing: str, record: Record, received: datetime) -> dict[str, Any]:
    """One fix as Firehose writes it: thing, seq, trigger, the fix fields, received."""
    d: dict[str, Any] = {"thing": thing, "seq": record.seq, "trigger": record.trigger}
    d.update(record.fix.to_dict())
    d["received"] = format_time(received)
    return d


@dataclass(frozen=True)
class LakeFix:
    """A fix read back from the lake."""

    thing: str
    record: Record
    received: datetime | None


def parse_fix_line(d: Any) -> LakeFix | None:
    """A lake line -> LakeFix; None when it is not a well-formed fix line."""
    if not isinstance(d, dict):
        return None
    seq, thing = d.get("seq"), d.get("thing")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(thing, str):
        return None
    try:
        fix = Fix.from_dict(d)
        received = parse_time(str(d["received"])) if d.get("received") else None
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return LakeFix(thing, Record(seq, fix, str(d.get("trigger") or "")), received)


def _complete_lines(path: Path) -> Iterator[Any]:
    """The JSON values of a file's complete lines; unparseable lines are skipped."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    end = data.rfind(b"\n")
    for raw in data[: end + 1].splitlines():
        try:
            yield json.loads(raw)
        except (ValueError, RecursionError):
            continue


def partition_days(root: Path, kind: str, thing: str) -> list[tuple[date, Path]]:
    """The day partitions of one thing, sorted."""
    base = root / kind / f"thing={thing}"
    out = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    for p in entries:
        if p.is_dir() and p.name.startswith("day="):
            try:
                out.append((date.fromisoformat(p.name[4:]), p))
            except ValueError:
                continue
    return sorted(out)


def things(root: Path, kind: str = "fixes") -> list[str]:
    """The things that have a partition under `kind`."""
    try:
        entries = list((root / kind).iterdir())
    except OSError:
        return []
    return sorted(p.name[6:] for p in entries if p.is_dir() and p.name.startswith("thing="))


def read_fixes(root: Path, thing: str, days: Iterable[date] | None = None) -> Iterator[LakeFix]:
    """Every fix line of one thing (duplicates included), optionally only some day partitions."""
    wanted = None if days is None else set(days)
    for day, folder in partition_days(root, "fixes", thing):
        if wanted is not None and day not in wanted:
            continue
        for f in sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.json")):
            for d in _complete_lines(f):
                lf = parse_fix_line(d)
                if lf is not None and lf.thing == thing:
                    yield lf


def check_lake(root: Path) -> None:
    """One line when `root` is not an existing readable folder."""
    if not root.exists():
        raise LakeError(f"lake {root} does not exist; pass the folder `tracker collect` writes")
    if not root.is_dir():
        raise LakeError(f"lake {root} is not a folder; pass the folder `tracker collect` writes")
    if not os.access(root, os.R_OK | os.X_OK):
        raise LakeError(f"lake {root} is not readable by this user")


def _condition_key(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


class LakeWriter:
    """Appends lines to partition files and fsyncs them in groups; knows what is already stored.

    `add_*` buffer a line (False: already stored, nothing buffered); `commit` writes and fsyncs
    every buffered line, and new files' folders, before returning. On open the index of stored
    (thing, seq) pairs, condition messages and rejected payloads is rebuilt from the lake itself.
    """

    def __init__(self, root: Path, *, sync: bool = True) -> None:
        self.root = root
        self.sync = sync  # False only for benchmarks: a crash could then lose acked messages
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.file_name = f"part-{stamp}-{os.getpid()}.jsonl"
        self.seqs: dict[str, set[int]] = {}
        self._conditions: set[tuple[str, str]] = set()
        self._rejected: set[str] = set()
        self._pending: dict[Path, list[bytes]] = {}
        self._fds: dict[Path, int] = {}
        self._lock_fd: int | None = None

    def open(self) -> LakeWriter:
        """Create the lake folder if needed, take its lock and rebuild the index."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = try_lock(self.root / LOCK_NAME, 0o644)
        except OSError as exc:
            raise LakeError(
                f"cannot write the lake folder {self.root}: {exc.strerror or exc}; make it "
                "writable or set [collect] lake to a writable place"
            ) from exc
        if fd is None:
            raise LakeError(
                f"another collector is writing the lake {self.root}; stop it or use another lake"
            )
        self._lock_fd = fd
        self._rebuild()
        return self

    def _rebuild(self) -> None:
        for thing in things(self.root, "fixes"):
            seqs = self.seqs.setdefault(thing, set())
            for lf in read_fixes(self.root, thing):
                seqs.add(lf.record.seq)
        for thing in things(self.root, "conditions"):
            for _, folder in partition_days(self.root, "conditions", thing):
                for f in folder.glob("*.jsonl"):
                    for d in _complete_lines(f):
                        if isinstance(d, dict):
                            doc = {k: v for k, v in d.items() if k not in ("thing", "received")}
                            self._conditions.add((thing, _condition_key(doc)))
        for f in (self.root / "rejected").glob("day=*/*.jsonl"):
            for d in _complete_lines(f):
                if isinstance(d, dict) and isinstance(d.get("sha256"), str):
                    self._rejected.add(d["sha256"])

    def known(self, thing: str, seq: int) -> bool:
        return seq in self.seqs.get(thing, ())

    def add_fix(self, thing: str, record: Record, received: datetime) -> bool:
        seqs = self.seqs.setdefault(thing, set())
        if record.seq in seqs:
            return False
        seqs.add(record.seq)
        day = record.fix.time.astimezone(timezone.utc).date().isoformat()
        folder = Path("fixes", f"thing={thing}", f"day={day}")
        self._buffer(folder, fix_line(thing, record, received))
        return True

    def add_condition(self, thing: str, doc: dict[str, Any], received: datetime) -> bool:
        key = (thing, _condition_key(doc))
        if key in self._conditions:
            return False
        self._conditions.add(key)
        try:
            day = parse_time(str(doc["time"])).date().isoformat()
        except (KeyError, TypeError, ValueError, OverflowError):
            day = received.date().isoformat()
        line = {"thing": thing, "received": format_time(received)}
        line.update((k, v) for k, v in doc.items() if k not in line)
        self._buffer(Path("conditions", f"thing={thing}", f"day={day}"), line)
        return True

    def add_rejected(self, topic: str, payload: bytes, reason: str, received: datetime) -> bool:
        digest = hashlib.sha256(topic.encode("utf-8", "replace") + b"\0" + payload).hexdigest()
        if digest in self._rejected:
            return False
        self._rejected.add(digest)
        kept = payload[:REJECTED_KEEP]
        line = {
            "received": format_time(received),
            "topic": topic,
            "reason": reason,
            "bytes": len(payload),
            "truncated": len(kept) < len(payload),
            "payload_b64": base64.b64encode(kept).decode(),
            "sha256": digest,
        }
        self._buffer(Path("rejected", f"day={received.date().isoformat()}"), line)
        return True

    def _buffer(self, folder: Path, line: dict[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        self._pending.setdefault(folder, []).append(text.encode() + b"\n")

    def commit(self) -> int:
        """Write and fsync every buffered line; returns how many lines were written."""
        n = 0
        new_dirs: set[Path] = set()
        written: list[int] = []
        for folder, lines in self._pending.items():
            fd = self._fds.get(folder)
            if fd is None:
                fd = self._open_file(folder, new_dirs)
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            written.append(fd)
            n += len(lines)
        self._pending.clear()
        if self.sync:
            for fd in written:
                os.fsync(fd)
            for d in sorted(new_dirs, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(d)
        return n

    def _open_file(self, folder: Path, new_dirs: set[Path]) -> int:
        target = self.root / folder
        # every folder created, and the parent of each, must be synced for the file to persist
        p = target
        missing = []
        while not p.exists():
            missing.append(p)
            p = p.parent
        target.mkdir(parents=True, exist_ok=True)
        new_dirs.update(m.parent for m in missing)
        new_dirs.add(target)  # the new file's own entry
        fd = os.open(target / self.file_name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fds[folder] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
