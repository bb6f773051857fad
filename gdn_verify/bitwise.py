"""Bitwise comparison of two tensors, with distances in ULPs.

Floats are compared on their integer views. Each bit pattern is mapped to an "ordered
integer" that counts representable values from +0 upward (negatives count downward from
-1), so the ULP distance of two values is the difference of their ordered integers and a
bit-for-bit increment of a finite value's magnitude is exactly one ULP.

Conventions (the places where "ULP distance" needs a choice):

* -0 sits one step below +0: distance(+0, -0) = 1. Every distinct non-NaN bit pattern gets
  its own ordered integer, so "distance 0" and "same bits" are the same statement and every
  differing element lands in a histogram bucket. (IEEE nextafter treats +-0 as one point, so
  the distance from -min_subnormal to +min_subnormal is 3 here, not 2.)
* Infinities are the ordered integers just past the largest finite values; Inf against a
  finite value is an ordinary (usually enormous) distance.
* A NaN against anything with other bits (a number, or a NaN with another payload or sign)
  has no ULP distance: it counts as `ULP_UNBOUNDED` in `max_ulp` and in its own histogram
  bucket "nan". Two NaNs with identical bits are equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Larger than any real distance: float64's ordered integers span fewer than 2**64 values.
ULP_UNBOUNDED = 1 << 64

HISTOGRAM_BUCKETS: tuple[tuple[str, int, int], ...] = (
    # (name, lowest distance, highest distance), both inclusive
    ("1", 1, 1),
    ("2-3", 2, 3),
    ("4-15", 4, 15),
    ("16-255", 16, 255),
    (">=256", 256, ULP_UNBOUNDED - 1),
)
NAN_BUCKET = "nan"

_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


@dataclass(frozen=True)
class BitDiff:
    """What differs, bit for bit, between an actual and an expected tensor."""

    dtype: str
    shape: tuple[int, ...]
    n_elements: int
    n_different: int
    max_ulp: int  # ULP_UNBOUNDED when a NaN differs
    first_index: tuple[int, ...] | None  # row-major first differing element
    histogram: dict[str, int] = field(default_factory=dict)  # bucket name -> count, "nan" last

    @property
    def equal(self) -> bool:
        return self.n_different == 0

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "n_elements": self.n_elements,
            "n_different": self.n_different,
            "max_ulp": self.max_ulp,
            "max_ulp_unbounded": self.max_ulp >= ULP_UNBOUNDED,
            "first_index": None if self.first_index is None else list(self.first_index),
            "histogram": dict(self.histogram),
            "equal": self.equal,
        }

    @classmethod
    def from_json(cls, d: dict) -> BitDiff:
        first = d["first_index"]
        return cls(
            dtype=d["dtype"],
            shape=tuple(d["shape"]),
            n_elements=d["n_elements"],
            n_different=d["n_different"],
            max_ulp=d["max_ulp"],
            first_index=None if first is None else tuple(first),
            histogram=dict(d["histogram"]),
        )

    def summary(self) -> str:
        """One line for reports, e.g. '3/4096 differ, max 2 ULP, first at (0, 5, 1, 3)'."""
        if self.equal:
            return f"bitwise equal ({self.n_elements} elements)"
        ulp = "NaN mismatch" if self.max_ulp >= ULP_UNBOUNDED else f"max {self.max_ulp} ULP"
        buckets = ", ".join(f"{name}: {n}" for name, n in self.histogram.items() if n)
        return (
            f"{self.n_different}/{self.n_elements} differ, {ulp}, first at {self.first_index} "
            f"[ULP histogram {buckets}]"
        )


def ordered_int(t: torch.Tensor) -> np.ndarray:
    """The ordered integers of a float tensor's elements, as int64 (flattened row-major).

    Non-negative patterns map to themselves; a negative pattern with magnitude bits m maps
    to -m - 1 (so -0 -> -1), which is `bits ^ max_positive` on the signed view.
    """
    bits = t.detach().contiguous().view(_INT_VIEW[t.dtype]).cpu().numpy().reshape(-1)
    max_positive = np.iinfo(bits.dtype).max
    return np.where(bits < 0, bits ^ max_positive, bits).astype(np.int64)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of ordered integers (int64 arrays), as uint64 without overflow."""
    hi = np.maximum(a, b).astype(np.uint64)
    lo = np.minimum(a, b).astype(np.uint64)
    # The true difference of two int64 is below 2**64, so wrap-around uint64 subtraction of
    # their two's-complement patterns is exact.
    return hi - lo


def _check_comparable(actual: torch.Tensor, expected: torch.Tensor) -> None:
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise ValueError(
            f"bit_diff: expected two torch tensors, got {type(actual).__name__} and {type(expected).__name__}"
        )
    if actual.dtype != expected.dtype:
        raise ValueError(f"bit_diff: dtype differs: actual {actual.dtype}, expected {expected.dtype}")
    if actual.shape != expected.shape:
        raise ValueError(
            f"bit_diff: shape differs: actual {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        )
    if actual.dtype not in _INT_VIEW:
        raise ValueError(
            f"bit_diff: dtype {actual.dtype} not supported; expected one of float64, float32, float16, bfloat16"
        )


def bit_diff(actual: torch.Tensor, expected: torch.Tensor) -> BitDiff:
    """Compare two tensors of the same dtype and shape bit for bit (see the module notes)."""
    _check_comparable(actual, expected)
    a = ordered_int(actual)
    b = ordered_int(expected)
    different = a != b
    n_different = int(different.sum())
    histogram = {name: 0 for name, _, _ in HISTOGRAM_BUCKETS}
    histogram[NAN_BUCKET] = 0
    max_ulp = 0
    first_index = None
    if n_different:
        nan_a = torch.isnan(actual.detach()).cpu().numpy().reshape(-1)
        nan_b = torch.isnan(expected.detach()).cpu().numpy().reshape(-1)
        nan_mismatch = different & (nan_a | nan_b)
        dist = ulp_distance(a[different & ~nan_mismatch], b[different & ~nan_mismatch])
        for name, lo, hi in HISTOGRAM_BUCKETS:
            histogram[name] = int(((dist >= lo) & (dist <= hi)).sum())
        histogram[NAN_BUCKET] = int(nan_mismatch.sum())
        max_ulp = ULP_UNBOUNDED if histogram[NAN_BUCKET] else int(dist.max())
        flat = int(np.flatnonzero(different)[0])
        first_index = tuple(int(i) for i in np.unravel_index(flat, tuple(actual.shape)))
    return BitDiff(
        dtype=str(actual.dtype).removeprefix("torch."),
        shape=tuple(actual.shape),
        n_elements=actual.numel(),
        n_different=n_different,
        max_ulp=max_ulp,
        first_index=first_index,
        histogram=histogram,
    )
