"""Float tolerances that hold on any machine.

float32 results differ in their last bits between CPUs (SIMD width, FMA, the BLAS/oneDNN kernel
picked) and between torch thread counts (how a reduction is split). An absolute tolerance such
as 1e-6 or 1e-7 only speaks of rounding when the values compared are of order 1; these helpers
scale every tolerance to the magnitudes compared, so that it stays far above rounding and far
below any real bug.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def assert_close_scaled(actual: Tensor, expected: Tensor, *, rtol: float = 1e-5,
                        atol: float = 1e-5, scale: float | None = None, msg=None) -> None:
    """`torch.testing.assert_close` with rtol, and an absolute floor of `atol * scale`, where
    `scale` defaults to the largest magnitude in `expected` (or `actual`). Entries near zero
    (e.g. sums that cancel) are thus compared at the precision of the tensor's largest entries,
    not at a fixed 1e-7 that can sit below their rounding. The defaults allow ~84 float32 ulps of
    the largest entry: two summation orders of a float32 sum differ by a few; a wrong gradient or
    weight differs at the level of the values themselves."""
    if scale is None:
        scale = max(float(expected.detach().abs().max()) if expected.numel() else 0.0,
                    float(actual.detach().abs().max()) if actual.numel() else 0.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=msg)


def dot_tol(a: Tensor, b: Tensor, k: float = 4.0) -> float:
    """Rounding bound of a float32 dot product of `a` and `b`, and of the quantities it is built
    from: k * n * eps * |a| * |b| (the error of an n-term float32 sum is at most (n - 1) * eps times
    the sum of the terms' magnitudes, itself at most |a| * |b|)."""
    n = max(a.numel(), 1)
    return float(k * n * EPS32 * a.double().norm() * b.double().norm())
