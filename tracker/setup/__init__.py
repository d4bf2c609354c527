"""Putting a board into service: provisioning, credentials, `tracker check`."""
