"""Direct ONNX node cases of claimed ops that nerve does not pass, each with the reason.

One module per op family (so the families can be worked on independently). Excluded cases
still count as failures in docs/conformance.md; listing them here only keeps the test run
green while the reason stands. Remove an entry the moment its case passes (the test is a
strict xfail, so a fixed case turns the run red until its entry goes).
"""

from tests.conformance.excludes import elementwise, linalg_reduce, nn, quant, tensor

EXCLUDED: dict[str, str] = {
    **elementwise.EXCLUDED,
    **nn.EXCLUDED,
    **tensor.EXCLUDED,
    **linalg_reduce.EXCLUDED,
    **quant.EXCLUDED,
}
