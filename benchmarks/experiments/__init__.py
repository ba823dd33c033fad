"""Timed experiments, one file per area: storing, reading, and how training reads."""
