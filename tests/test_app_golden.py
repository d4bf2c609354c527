"""Golden tests of the whole daemon on recorded drives, in simulated time: what the cloud receives
(every fix with its seq and trigger, every condition with its reason) and the state changes.

Each run is compared with tests/data/golden/app/NAME.txt; TRACKER_REGEN_GOLDEN=1 rewrites them,
and a difference is shown as a diff naming the lines that changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.golden import check_golden
from test_app import Harness, make_app

from tracker.core.events import LinkUp
from tracker.core.fix import format_time
from tracker.link import codec

GOLDEN = Path(__file__).parent / "data" / "golden" / "app"


class Traced(Harness):
    """A harness that writes one line per state change, fix received and condition received."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lines: list[str] = []
        self._seen = 0

    def _stamp(self) -> str:
        t = self.app.gps_now()
        return format_time(t) if t else "-"

    def _note_state(self) -> None:
        if self.app.device.state.value != self.states[-1]:
            self.lines.append(f"{self._stamp()} state {self.app.device.state.value}")
        super()._note_state()
        for p in self.uplink.sent[self._seen :]:
            if p.topic.endswith("/location"):
                for r in codec.decode(p.payload):
                    self.lines.append(f"{format_time(r.fix.time)} fix {r.seq} {r.trigger}")
            elif p.topic.endswith("/condition"):
                reason = json.loads(p.payload)["reason"]
                self.lines.append(f"{self._stamp()} condition {reason}")
        self._seen = len(self.uplink.sent)


CASES = {
    "drive": ("nmeaparser/NmeaSampleData.txt", "sim://?percent=80"),
    "parked": ("signalk/gps.log", "sim://?percent=80"),
    "battery-low": ("nmeaparser/NmeaSampleData.txt", "sim://?percent=30&steps=900:12"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_app_on_a_recording_matches_its_golden_trace(name: str, tmp_path: Path) -> None:
    recording, battery = CASES[name]
    # the traces pin each fix's own message (max_delay_s = 0, as before fixes shared messages);
    # tests/test_app.py covers the coalescing
    h = Traced(make_app(tmp_path, battery=battery, max_delay_s=0))
    h.event(LinkUp())
    h.play(recording)
    h._note_state()
    text = "\n".join(h.lines) + "\n"
    check_golden(GOLDEN / f"{name}.txt", text, "app trace")
