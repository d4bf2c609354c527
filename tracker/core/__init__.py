"""The ground floor every layer stands on: errors, clocks, files, fix limits, settings, events."""
