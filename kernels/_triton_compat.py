"""Interpreter workarounds, applied only under TRITON_INTERPRET=1.

The Triton interpreter keeps bfloat16 tensors as raw uint16 bit patterns. Loading and
`.to(tl.float32)` are exact, but two operations are wrong there:

* `tl.dot` on bfloat16 operands multiplies the bit patterns as integers (and on every dtype
  it is `numpy.matmul`, whose BLAS summation order depends on the CPU model);
* an fp32 -> bf16 cast truncates instead of rounding to nearest even.

Kernels therefore do all arithmetic in float32 (bfloat16 only as a storage and dot-operand
format) and route every dot and every narrowing cast through `dot` and `cast_to` below.
On a GPU both compile to the plain operation; under the interpreter `dot` upcasts its
operands to the accumulation dtype (exact) and sums exactly rounded products in a fixed
pairwise order, and `cast_to` rounds to nearest even by integer arithmetic on the fp32 bits.
"""

import os

import triton
import triton.language as tl

# Read once, when kernels are imported: `@triton.jit` itself decides interpreter or compiler
# from the same variable at decoration time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRET = tl.constexpr(INTERPRET)


@triton.jit
def _halvings(shape):
    """(outer dims, the inner dim's successive halves) of a product tile [..., K]; interpreter only."""
    dims = [int(getattr(d, "value", d)) for d in shape]
    widths, width = [], dims[-1]
    while width > 1:
        width //= 2
        widths.append(width)
    return dims[:-1], widths


@triton.jit
def _pairwise_dot(a, b):
    """a @ b as exactly rounded products summed in a fixed pairwise tree over the inner dimension.

    Runs only under the interpreter. There `tl.dot` is `numpy.matmul`, i.e. the BLAS kernel
    OpenBLAS picks for the CPU model (and its thread count), whose summation order differs
    between machines; elementwise products and adds are IEEE operations with one result on
    every x86-64 CPU, so this dot's bits depend on nothing but its operands. The inner
    dimension is a power of two (tl.dot's tiles are).
    """
    acc_dtype = tl.float64 if a.dtype == tl.float64 else tl.float32
    a = a.to(acc_dtype)
    b = b.to(acc_dtype)
    if len(a.shape) == 3:
        product = a[:, :, None, :] * tl.permute(b, (0, 2, 1))[:, None, :, :]  # [B, M, N, K]
    else:
        product = a[:, None, :] * tl.trans(b)[None, :, :]  # [M, N, K]
    outer, widths = _halvings(product.shape)
    for width in widths:
        even, odd = tl.split(tl.reshape(product, outer + [width, 2]))
        product = even + odd
    return tl.reshape(product, outer)


@triton.jit
def dot(a, b, PRECISION: tl.constexpr):
    """a @ b with float32 (float64 in exact mode) accumulation.

    PRECISION is tl.dot's input_precision for float32 operands ("ieee" keeps TF32 out).
    Under the interpreter the product is `_pairwise_dot`'s, with no BLAS in the path.
    """
    if _INTERPRET:
        return _pairwise_dot(a, b)
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision=PRECISION)
    return tl.dot(a, b)


@triton.jit
def _bf16_round_nearest_even(x):
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def cast_to(x, DTYPE: tl.constexpr):
    """Cast x to DTYPE, rounding to nearest even for fp32 -> bf16 also under the interpreter."""
    if _INTERPRET:
        if DTYPE == tl.bfloat16:
            return _bf16_round_nearest_even(x.to(tl.float32))
    return x.to(DTYPE)


# Loops whose trip count is only known at run time (a sequence's length, its chunk count).
#
# Compiled, `for t in range(n)` with a scalar tensor n is an scf.for: the software pipeliner
# (tl.range(..., num_stages=...)) only acts on that form, so kernels keep it. The Triton 3.6
# interpreter cannot run it with NumPy >= 2.4: it turns the bound into an index with
# int(handle.data), and scalars are 1-element 1-D arrays there, which NumPy 2.4 no longer
# converts ("only 0-dimensional arrays can be converted to Python scalars"; kernel int
# arguments and loaded scalars alike). Triton 3.9 squeezes first. A `while` loop runs in
# every mode but compiles to scf.while, which is never pipelined. So the bound goes through
# `loop_bound`: the value itself when compiled, a Python int under the interpreter.
@triton.jit
def _interpreted_scalar_as_int(x):
    # Runs only under the interpreter, where a tensor's handle holds its NumPy data.
    return int(x.handle.data.item())


@triton.jit
def loop_bound(n):
    """n as a bound for range / tl.range that every Triton version accepts when interpreting."""
    if _INTERPRET:
        return _interpreted_scalar_as_int(n)
    return n
