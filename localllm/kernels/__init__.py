"""Numba kernels: quantized linear algebra (quantized.py) and transformer ops (ops.py)."""
