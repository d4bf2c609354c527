"""The cloud side's local twin: collector, lake, export, gaps, decode."""
