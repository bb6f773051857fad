import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gdn_verify.bitwise import NAN_BUCKET, ULP_UNBOUNDED, BitDiff, bit_diff

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SIGNED_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
BITS = {torch.float64: 64, torch.float32: 32, torch.float16: 16, torch.bfloat16: 16}


def from_patterns(patterns: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Floats with the given unsigned bit patterns (built on the signed integer view)."""
    width = BITS[dtype]
    signed = [p - (1 << width) if p >= 1 << (width - 1) else p for p in patterns]
    return torch.tensor(signed, dtype=SIGNED_VIEW[dtype]).view(dtype)


def patterns_of(t: torch.Tensor) -> list[int]:
    width = BITS[t.dtype]
    return [p % (1 << width) for p in t.view(SIGNED_VIEW[t.dtype]).tolist()]


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    return bit_diff(a.reshape(1), b.reshape(1)).max_ulp


@st.composite
def patterns(draw, dtype: torch.dtype, min_size=1, max_size=12):
    width = BITS[dtype]
    return draw(st.lists(st.integers(0, (1 << width) - 1), min_size=min_size, max_size=max_size))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@given(data=st.data())
def test_self_diff_is_equal_including_nans(dtype, data):
    x = from_patterns(data.draw(patterns(dtype)), dtype)
    d = bit_diff(x, x.clone())
    assert d.equal and d.n_different == 0 and d.max_ulp == 0 and d.first_index is None
    assert sum(d.histogram.values()) == 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@given(data=st.data())
def test_bit_increment_is_one_ulp(dtype, data):
    # Independent of the ordered-integer map: the neighbour one step further from zero is
    # the pattern + 1 (unsigned view), for every dtype including bfloat16.
    pattern = data.draw(st.integers(0, (1 << BITS[dtype]) - 2))
    x, nxt = from_patterns([pattern], dtype), from_patterns([pattern + 1], dtype)
    if torch.isnan(x).any() or torch.isnan(nxt).any():
        return
    assert ulps(nxt, x) == 1
    assert patterns_of(x) == [pattern]  # the helper itself round-trips


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@given(data=st.data())
def test_nextafter_is_one_ulp(dtype, data):
    x = from_patterns(data.draw(patterns(dtype, 1, 1)), dtype)
    if not torch.isfinite(x).all():
        return
    up = torch.nextafter(x, torch.full_like(x, math.inf))
    down = torch.nextafter(x, torch.full_like(x, -math.inf))
    value, negative = x.item(), bool(torch.signbit(x).item())
    # -0 -> +min_subnormal crosses both zeros: 2 ULP by this module's convention (tested below).
    if not (value == 0 and negative):
        assert ulps(up, x) == 1
    if not (value == 0 and not negative):
        assert ulps(down, x) == 1


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_signed_zero_convention(dtype):
    pos0, neg0 = torch.tensor([0.0], dtype=dtype), torch.tensor([-0.0], dtype=dtype)
    tiny = torch.tensor([torch.finfo(dtype).smallest_normal], dtype=dtype)
    min_sub = from_patterns([1], dtype)
    d = bit_diff(pos0, neg0)
    assert d.n_different == 1 and d.max_ulp == 1 and d.histogram["1"] == 1
    assert ulps(min_sub, -min_sub) == 3
    # All subnormals (and +0) lie below the smallest normal: 2**mantissa_bits steps.
    mantissa_bits = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}[dtype]
    assert ulps(tiny, pos0) == 1 << mantissa_bits


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@given(data=st.data())
def test_symmetry(dtype, data):
    n = data.draw(st.integers(1, 10))
    a = from_patterns(data.draw(patterns(dtype, n, n)), dtype)
    b = from_patterns(data.draw(patterns(dtype, n, n)), dtype)
    assert bit_diff(a, b) == bit_diff(b, a)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@given(data=st.data())
def test_ordering_agrees_with_float_order(dtype, data):
    a = from_patterns(data.draw(patterns(dtype, 1, 1)), dtype)
    b = from_patterns(data.draw(patterns(dtype, 1, 1)), dtype)
    if torch.isnan(a).any() or torch.isnan(b).any() or a.item() == b.item():
        return
    lo, hi = (a, b) if a.item() < b.item() else (b, a)
    # Triangle: a value strictly between (their midpoint, when representable and distinct)
    # splits the distance into two positive parts that add up.
    mid = ((lo.double() + hi.double()) / 2).to(dtype)
    if lo.item() < mid.item() < hi.item():
        assert ulps(lo, mid) + ulps(mid, hi) == ulps(lo, hi)


def test_counts_histogram_and_first_index_in_shape():
    expected = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    actual = expected.clone()
    inf = torch.tensor(math.inf)
    actual[1, 2, 3] = torch.nextafter(expected[1, 2, 3], inf)  # 1 ULP
    step = expected[2, 0, 1]
    for _ in range(3):
        step = torch.nextafter(step, -inf)
    actual[2, 0, 1] = step  # 3 ULP
    expected[0, 3, 4] = 0.5
    actual[0, 3, 4] = 1.5  # same sign: the distance is the difference of the bit patterns
    d = bit_diff(actual, expected)
    assert d.n_elements == 60 and d.n_different == 3
    assert d.first_index == (0, 3, 4)
    assert d.histogram["1"] == 1 and d.histogram["2-3"] == 1 and d.histogram[NAN_BUCKET] == 0
    assert d.histogram[">=256"] == 1 and d.histogram["4-15"] == d.histogram["16-255"] == 0
    assert d.max_ulp == int(np.float32(1.5).view(np.int32)) - int(np.float32(0.5).view(np.int32))
    assert not d.equal
    assert BitDiff.from_json(d.to_json()) == d


def test_nan_handling():
    nan_a = torch.tensor([math.nan], dtype=torch.float32)
    other_nan = nan_a.view(torch.int32) + 1
    assert bit_diff(nan_a, nan_a.clone()).equal
    for other in (torch.tensor([1.0]), other_nan.view(torch.float32), -nan_a):
        d = bit_diff(nan_a, other)
        assert d.n_different == 1 and d.max_ulp == ULP_UNBOUNDED and d.histogram[NAN_BUCKET] == 1
        assert sum(d.histogram.values()) == 1
        assert d.to_json()["max_ulp_unbounded"]
    # Inf against the largest finite value is an ordinary distance.
    big = torch.tensor([torch.finfo(torch.float16).max], dtype=torch.float16)
    assert bit_diff(big, torch.tensor([math.inf], dtype=torch.float16)).max_ulp == 1


def test_float64_extremes_do_not_overflow():
    big = torch.tensor([torch.finfo(torch.float64).max], dtype=torch.float64)
    d = bit_diff(big, -big)
    # ordered(max) = 0x7FEFFFFFFFFFFFFF, ordered(-max) = -0x7FEFFFFFFFFFFFFF - 1
    assert d.max_ulp == 2 * 0x7FEFFFFFFFFFFFFF + 1 and d.histogram[">=256"] == 1


def test_mismatch_errors_name_what_differs():
    with pytest.raises(ValueError, match="dtype differs"):
        bit_diff(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape differs.*\(2, 3\).*\(3, 2\)"):
        bit_diff(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="not supported"):
        bit_diff(torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int32))


def test_non_contiguous_and_empty():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[3, 1] = -y[3, 1]
    d = bit_diff(x.t(), y.t())
    assert d.first_index == (1, 3) and d.shape == (6, 4)
    assert bit_diff(torch.zeros(0, 3), torch.zeros(0, 3)).equal
