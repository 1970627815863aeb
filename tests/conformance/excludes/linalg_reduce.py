"""Excluded cases of the linalg_reduce family: case name -> why it fails."""

EXCLUDED: dict[str, str] = {}
