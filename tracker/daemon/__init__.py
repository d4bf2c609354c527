"""The one loop that owns the state and the process around it."""
