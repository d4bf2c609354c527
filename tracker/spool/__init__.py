"""The fixes not yet acknowledged, on disk: the only SQLite user and its file care."""
