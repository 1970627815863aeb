"""Excluded cases of the tensor family: case name -> why it fails.

The only exclusions left are cases whose input is not a tensor (an optional or a sequence):
nerve's graphs carry tensors only.
"""

from __future__ import annotations

EXCLUDED: dict[str, str] = {
    "test_identity_opt": "the input is an optional(tensor), not a tensor; nerve takes tensors only",
    "test_identity_sequence": "the input is a sequence of tensors; nerve takes tensors only",
}
