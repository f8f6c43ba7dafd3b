"""Synchronisation between the threads of one parallel region: atomics and a spinning barrier.

A decode step launched ~5 parallel regions per layer (one per matrix product); each launch wakes
Numba's OpenMP pool, ~3 µs while its threads still spin and 20-150 µs once they sleep (they spin
~1 µs: _runtime.py), about 1-2 ms of a 17 ms Qwen2.5-0.5B token. decode_token_pooled instead opens
one region per token, one iteration per thread, and its threads meet at `barrier` between the
products: 0.09 µs a crossing on 2 threads, against ~3 µs for the cheapest launch (measured 2026-12-03).

A waiting thread spins on `pause` for SPIN rounds, then yields its core (sched_yield) on every round,
so that a thread of ours that the OS has preempted (a busy machine) gets the core back soon.

The state is an int64 array of STATE_LEN, zeroed before each region: slots a cache line apart.
`arrive` is the region's first barrier, with a time limit: a threading layer that ran the iterations
one after another (TBB may) would otherwise wait forever; past the limit it cancels the region and
every iteration returns at once, and the caller falls back to the launch-per-product path.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .entry import lean_caches

COUNT, GEN, ARRIVED = 0, 8, 16    # int64 slots, 64 bytes apart
STATE_LEN = 24
CANCELLED = -(1 << 40)
SPIN = 2000               # pause rounds before a waiting thread starts yielding
ARRIVE_LIMIT = 2_000_000  # yields at the first barrier before giving up (about a second)


def _slot(context, builder, signature, args):
    a = context.make_array(signature.args[0])(context, builder, args[0])
    return builder.gep(a.data, [args[1]])


@intrinsic
def atomic_add(typingctx, arr, i, v):
    """arr[i] += v as one atomic operation (sequentially consistent); returns the old value. arr int64."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", _slot(context, builder, signature, args), args[2], "seq_cst")
    return types.int64(arr, i, v), codegen


@intrinsic
def atomic_load(typingctx, arr, i):
    """arr[i], read atomically (sequentially consistent). arr int64."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_slot(context, builder, signature, args), "seq_cst", 8)
    return types.int64(arr, i), codegen


@intrinsic
def atomic_store(typingctx, arr, i, v):
    """arr[i] = v, written atomically (sequentially consistent). arr int64."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _slot(context, builder, signature, args), "seq_cst", 8)
        return context.get_dummy_value()
    return types.void(arr, i, v), codegen


@intrinsic
def atomic_cas(typingctx, arr, i, expected, new):
    """arr[i] = new if arr[i] == expected, atomically; True when it was swapped. arr int64."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_slot(context, builder, signature, args), args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(arr, i, expected, new), codegen


@intrinsic
def cpu_pause(typingctx):
    """The x86 spin-wait hint (`pause`)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def sched_yield(typingctx):
    """libc's sched_yield(): give the core to another runnable thread."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(fn, [])
    return types.int32(), codegen


@njit(cache=True)
def _wait(state, gen):
    spins = 0
    while atomic_load(state, GEN) == gen:
        if spins < SPIN:
            cpu_pause()
            spins += 1
        else:
            sched_yield()


@njit(cache=True)
def barrier(state, nt):
    """Wait until all nt threads of the region have called barrier as often as this one."""
    gen = atomic_load(state, GEN)
    if atomic_add(state, COUNT, 1) == nt - 1:      # the last to come releases the others
        atomic_store(state, COUNT, 0)
        atomic_add(state, GEN, 1)
    else:
        _wait(state, gen)


@njit(cache=True)
def arrive(state, nt):
    """The region's first barrier: True once all nt threads are running, False (for every thread) when
    they did not all arrive within ARRIVE_LIMIT yields, i.e. the iterations do not run side by side.
    The thread that gives up swaps the arrival count for a large negative number, if no one came
    meanwhile: a later arrival then sees it negative, and once the count reaches nt none can give up."""
    n = atomic_add(state, ARRIVED, 1) + 1
    spins = 0
    while 0 <= n < nt:
        if spins < SPIN:
            cpu_pause()
        elif spins < SPIN + ARRIVE_LIMIT:
            sched_yield()
        elif atomic_cas(state, ARRIVED, n, CANCELLED):
            break
        spins += 1
        n = atomic_load(state, ARRIVED)
    return atomic_load(state, ARRIVED) >= nt


lean_caches(globals())
