"""Excluded cases of the elementwise family: case name -> why it fails."""

EXCLUDED: dict[str, str] = {}
