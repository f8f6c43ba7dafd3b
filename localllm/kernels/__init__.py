"""Numba kernels: quantized linear algebra (quantized.py, repacked.py, avx2.py, vnni.py), transformer ops
(ops.py), whole-token decode (decode.py). Every module's cached kernels load without Numba's context
refresh (entry.py): a fresh process that finds them all in the cache never imports Numba's NumPy
implementations (nor, through arraymath's BLAS probe, SciPy)."""
