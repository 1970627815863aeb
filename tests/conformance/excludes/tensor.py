"""Excluded cases of the tensor family: case name -> why it fails.

Every exclusion here is a case whose tensors have an element type nerve has no dtype for
(``nerve.ir.DType``: no float8, float4, 4-bit or 2-bit integers), or whose input is not a tensor.
nerve refuses those models at import with a ModelFormatError naming the type; supporting them
means adding the dtypes to the IR first, not changing Cast.
"""

from __future__ import annotations

# Element types of the ONNX Cast cases that nerve has no dtype for, with what they are.
_NO_DTYPE = {
    "FLOAT8E4M3FNUZ": "float8 E4M3FNUZ",
    "FLOAT8E4M3FN": "float8 E4M3FN",
    "FLOAT8E5M2FNUZ": "float8 E5M2FNUZ",
    "FLOAT8E5M2": "float8 E5M2",
    "FLOAT8E8M0": "float8 E8M0",
    "FLOAT4E2M1": "float4 E2M1",
    "UINT4": "4-bit unsigned integer",
    "INT4": "4-bit integer",
    "UINT2": "2-bit unsigned integer",
    "INT2": "2-bit integer",
}

# (from, to) pairs of the Cast and CastLike cases that involve one of those types.
_PAIRS = [
    *[(src, dst) for src in ("FLOAT", "FLOAT16") for dst in (
        "FLOAT4E2M1", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
        "INT2", "INT4", "UINT2", "UINT4",
    )],
    *[(src, dst) for src in (
        "FLOAT4E2M1", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
        "INT2", "INT4", "UINT2", "UINT4",
    ) for dst in ("FLOAT", "FLOAT16")],
    ("INT2", "INT8"), ("INT4", "INT8"), ("UINT2", "UINT8"), ("UINT4", "UINT8"),
]  # fmt: skip

_NO_SATURATE_PAIRS = [
    (src, dst)
    for src in ("FLOAT", "FLOAT16")
    for dst in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
]

_E8M0_CASES = [
    ("FLOAT16", "FLOAT8E8M0"),
    ("FLOAT8E8M0", "FLOAT"),
    ("FLOAT8E8M0", "FLOAT16"),
    ("FLOAT", "FLOAT8E8M0"),
]


def _why(src: str, dst: str) -> str:
    missing = src if src in _NO_DTYPE else dst
    return (
        f"needs element type {missing} ({_NO_DTYPE[missing]}), which nerve has no dtype for; "
        "the model is refused at import"
    )


def _cast_exclusions() -> dict[str, str]:
    out: dict[str, str] = {}
    for variant, pairs in (("", _PAIRS), ("no_saturate_", _NO_SATURATE_PAIRS)):
        for src, dst in pairs:
            out[f"test_cast_{variant}{src}_to_{dst}"] = _why(src, dst)
            # CastLike also has an expanded case (its function body), with the same types.
            out[f"test_castlike_{variant}{src}_to_{dst}"] = _why(src, dst)
            out[f"test_castlike_{variant}{src}_to_{dst}_expanded"] = _why(src, dst)
    for src, dst in _E8M0_CASES:
        out[f"test_cast_e8m0_{src}_to_{dst}"] = _why(src, dst)
    return out


EXCLUDED: dict[str, str] = {
    **_cast_exclusions(),
    "test_identity_opt": "the input is an optional(tensor), not a tensor; nerve takes tensors only",
    "test_identity_sequence": "the input is a sequence of tensors; nerve takes tensors only",
}
