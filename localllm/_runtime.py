"""Process settings that must be in place before Numba's OpenMP pool starts.

With libgomp's default spin-then-sleep wait, each parallel region cost ~10 ms on these 2-core VMs
whenever another process was busy (a spinning worker holds the core the caller needs); the passive
wait costs ~20 µs per region under load and ~30 µs idle. Users can still override it.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
