"""Excluded cases of the tensor family: case name -> why it fails."""

EXCLUDED: dict[str, str] = {}
