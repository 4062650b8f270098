"""Seeded randomness for sampling: a uniform number that is a pure function of (seed, index).

The batch builder calls `seeded_uniform(row seed, index of the token being sampled)` on the host,
so a seeded request draws the same tokens whatever else is in the batch and at whatever row it sits.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """splitmix64 finalizer: a bijective 64-bit mix."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def seeded_uniform(seed: int, index: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, index).

    It has 23 random bits, so it is exact in float32 and `u * total < total` in float32 arithmetic:
    inverse-CDF sampling then never runs past the last token with non-zero probability.
    """
    z = _mix64(_mix64(seed & _MASK64) ^ (index & _MASK64))
    return (z >> 41) * 2.0**-23
