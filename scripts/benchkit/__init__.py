"""What the bench (scripts/bench*.py, scripts/faults) and the tests share, and the board never
runs: a throw-away PKI, a Mosquitto broker with mutual TLS, a cloud-side subscriber, `tracker
collect` and `tracker run` as child processes, a GPS receiver on a pseudo-terminal, synthetic
fixes, and the bench's report and pictures.

Not installed with the tracker: scripts/ is on `sys.path` for the bench scripts (their own
folder) and for the tests (pytest's `pythonpath`). Imports the tracker and `hw`, never pytest
nor tests/support.
"""
