"""The shadow service over the test broker, as a fixture (the service itself is
`benchkit.shadow`, shared with the bench)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from benchkit.shadow import ShadowResponder, ShadowService, delta_of

__all__ = ["ShadowResponder", "ShadowService", "delta_of", "shadow_responder_fixture"]


@pytest.fixture(name="shadow_responder")
def shadow_responder_fixture(broker: Any, pki: Any) -> Iterator[ShadowResponder]:
    """The test thing's classic and `tracker` named shadows, answered over the test broker.

    Needs the `broker` and `pki` fixtures imported into the test module.
    """
    responder = ShadowResponder(
        broker.aws_config(pki.cloud, session_expiry_s=0),
        "shadow-service",
        pki.thing_name,
        shadow_names=(None, "tracker"),
    )
    responder.start()
    try:
        yield responder
    finally:
        responder.stop()
