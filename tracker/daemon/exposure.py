"""Files others on the board may read or change, said once when the daemon starts.

Standard library only (the daemon must not pay for `cryptography` here).
"""

from __future__ import annotations

from pathlib import Path


def exposure_warnings(key: str | Path, config: str | Path | None) -> list[str]:
    """What others on the board may read or change: a key readable by group or others (through
    a symlink too), a config file or its directory writable by others. One line each."""
    out: list[str] = []
    key_path = Path(key)
    try:
        real = key_path.resolve()
        mode = real.stat().st_mode & 0o777
    except OSError:
        return out  # the uplink names a missing key
    via = f" (via {key_path})" if real != key_path else ""
    if mode & 0o077:
        out.append(
            f"private key {real}{via} is mode {mode:04o}, readable by other users: chmod 600 {real}"
        )
    if config is not None:
        for path in (Path(config), Path(config).resolve().parent):
            try:
                mode = path.stat().st_mode & 0o777
            except OSError:
                continue
            if mode & 0o022:
                out.append(
                    f"{path} is mode {mode:04o}, writable by other users who could point the"
                    f" tracker elsewhere: chmod go-w {path}"
                )
    return out
