"""Excluded cases of the nn family: case name -> why it fails."""

EXCLUDED: dict[str, str] = {}
