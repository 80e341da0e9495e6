"""Scalar helpers shared by the CUDA kernels and plain CPU code (``numba.njit``).

Being ordinary ``njit`` functions, they are compiled for the GPU when a kernel calls them and can
be tested on the CPU with real Numba typing, which the CUDA simulator does not do.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Norm kinds, as the kernels take them.
L2, L1, MAX = 0, 1, 2
NORM_KINDS = {"l2": L2, "l1": L1, "max": MAX}
# Distance kinds.
EUCLIDEAN, MANHATTAN = 0, 1
DISTANCE_KINDS = {"euclidean": EUCLIDEAN, "manhattan": MANHATTAN}


class KeyBits:
    """Constants for turning the bit pattern of a float of ``nbits`` bits into a sort key."""

    def __init__(self, nbits: int) -> None:
        self.nbits = nbits
        self.all_ones = np.uint64((1 << nbits) - 1)
        self.sign = np.uint64(1 << (nbits - 1))
        self.magnitude = np.uint64((1 << (nbits - 1)) - 1)
        self.inf = np.uint64(0x7F800000 if nbits == 32 else 0x7FF0000000000000)


@njit(cache=False)
def order_key(bits, larger_better, all_ones, sign, magnitude, inf):
    """Unsigned sort key of a float given by its bits: a smaller key is a better score.

    Ascending floats map to ascending unsigned integers (flip every bit of negatives, set the
    sign bit of positives); for similarities the key is inverted so the largest score comes
    first. NaN gets the worst key, ``all_ones``, which no number reaches; -0.0 gets the key of
    +0.0, so zero scores tie (and the lower id wins) as they do on the CPU.
    """
    b = np.uint64(bits)
    if (b & magnitude) > inf:
        return all_ones
    if (b & magnitude) == np.uint64(0):
        b = np.uint64(0)
    ascending = (b ^ all_ones) if (b & sign) != np.uint64(0) else (b | sign)
    return (ascending ^ all_ones) if larger_better else ascending


@njit(cache=False)
def norm_step(acc, value, kind):
    """``acc`` (float64) updated with one element of a row for the norm ``kind``."""
    a = abs(np.float64(value))
    if kind == L1:
        return acc + a
    if kind == MAX:
        return acc if a <= acc else a  # a NaN element propagates
    return acc + a * a


@njit(cache=False)
def norm_merge(a, b, kind):
    """Two partial norm accumulators of one row combined."""
    if kind == MAX:
        return a if b <= a else b
    return a + b


@njit(cache=False)
def norm_finish(acc, kind):
    """The norm from its accumulator."""
    return math.sqrt(acc) if kind == L2 else acc


@njit(cache=False)
def distance_step(acc, a, b, kind):
    """``acc`` (float64) updated with one feature of two rows, computed from their difference."""
    d = np.float64(a) - np.float64(b)
    if kind == MANHATTAN:
        return acc + abs(d)
    return acc + d * d


@njit(cache=False)
def distance_finish(acc, kind):
    """The distance from its accumulator."""
    return acc if kind == MANHATTAN else math.sqrt(acc)
