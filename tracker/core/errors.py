"""The tracker's exception tree; every error a user can cause is one of these, shown as one line.

Imports nothing from the rest of the package.
"""

from __future__ import annotations


class TrackerError(Exception):
    """Base of every error the tracker raises on purpose; its message is one line for the user."""


class ConfigError(TrackerError, ValueError):
    """A configuration value is missing, malformed or out of bounds; the message names the key."""


class GpsError(TrackerError, OSError):
    """The GPS port cannot be opened or read."""


class SpoolError(TrackerError, OSError):
    """The on-disk spool cannot be opened or written."""


class UplinkError(TrackerError):
    """The MQTT connection cannot be set up (credentials, endpoint, TLS)."""


class CodecError(TrackerError, ValueError):
    """A message payload cannot be encoded or decoded."""


class ProvisionError(TrackerError):
    """Provisioning cannot go on; the message says what to fix."""


class HardwareError(TrackerError, OSError):
    """A power or sensor backend failed."""
