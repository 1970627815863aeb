"""Quantization family (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, ConvInteger,
QLinearConv): every direct case passes, so nothing is excluded."""

EXCLUDED: dict[str, str] = {}
