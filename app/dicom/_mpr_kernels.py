"""Numba kernels for MPR (compiled on first use, cached on disk when the folder is writable):
trilinear sampling of a plane or slab, and slab reduction along the last (contiguous) axis.

numba is already a runtime dependency (openai-whisper needs it); numpy alone gathers
strided columns one cache line per voxel, 10–40× slower for sagittal slabs and oblique planes.
"""

from __future__ import annotations

import math
import os

from numba import njit, prange

#: numba caches compiled kernels beside their source; a frozen bundle without the .py files has
#: nowhere to look them up (numba would refuse to compile), so it compiles afresh there.
_CACHE = os.path.isfile(__file__)
MODE_CODES = {"": 0, "mip": 1, "minip": 2, "mean": 3}


@njit(cache=_CACHE, inline="always")
def _lerp_axis(x, n):
    """(i0, i1, w) for continuous index x on an axis of n voxels; i0 = -1 when outside the
    voxels (each voxel reaches ±0.5 around its centre; the half voxel at the edges is clamped)."""
    if x < -0.5 or x > n - 0.5:
        return -1, -1, 0.0
    if x <= 0.0:
        return 0, 0, 0.0
    if x >= n - 1:
        return n - 1, n - 1, 0.0
    i0 = int(math.floor(x))
    return i0, i0 + 1, x - i0


@njit(parallel=True, cache=_CACHE)
def sample_plane(vox, base, dr, dc, dn, offsets, mode, cval, out):
    """out[r, c] = slab ``mode`` over ``offsets`` of trilinear vox at base + r·dr + c·dc + o·dn (array index space)."""
    nk, nj, ni = vox.shape
    rows, cols = out.shape
    m = offsets.shape[0]
    for r in prange(rows):
        for c in range(cols):
            acc = 0.0
            for q in range(m):
                o = offsets[q]
                z = base[0] + dr[0] * r + dc[0] * c + dn[0] * o
                y = base[1] + dr[1] * r + dc[1] * c + dn[1] * o
                x = base[2] + dr[2] * r + dc[2] * c + dn[2] * o
                k0, k1, wk = _lerp_axis(z, nk)
                j0, j1, wj = _lerp_axis(y, nj)
                i0, i1, wi = _lerp_axis(x, ni)
                if k0 < 0 or j0 < 0 or i0 < 0:
                    val = cval
                else:
                    a = vox[k0, j0, i0] * (1.0 - wi) + vox[k0, j0, i1] * wi
                    b = vox[k0, j1, i0] * (1.0 - wi) + vox[k0, j1, i1] * wi
                    cc = vox[k1, j0, i0] * (1.0 - wi) + vox[k1, j0, i1] * wi
                    d = vox[k1, j1, i0] * (1.0 - wi) + vox[k1, j1, i1] * wi
                    val = (a * (1.0 - wj) + b * wj) * (1.0 - wk) + (cc * (1.0 - wj) + d * wj) * wk
                if q == 0:
                    acc = val
                elif mode == 1:
                    acc = max(acc, val)
                elif mode == 2:
                    acc = min(acc, val)
                else:
                    acc += val
            if mode == 3 and m > 1:
                acc /= m
            out[r, c] = acc


@njit(parallel=True, cache=_CACHE)
def _max_last(vox, lo, hi, out):
    nk, nj, _ = vox.shape
    for k in prange(nk):
        for j in range(nj):
            acc = vox[k, j, lo]
            for i in range(lo + 1, hi):
                if vox[k, j, i] > acc:
                    acc = vox[k, j, i]
            out[k, j] = acc


@njit(parallel=True, cache=_CACHE)
def _min_last(vox, lo, hi, out):
    nk, nj, _ = vox.shape
    for k in prange(nk):
        for j in range(nj):
            acc = vox[k, j, lo]
            for i in range(lo + 1, hi):
                if vox[k, j, i] < acc:
                    acc = vox[k, j, i]
            out[k, j] = acc


@njit(parallel=True, cache=_CACHE)
def _mean_last(vox, lo, hi, out):
    nk, nj, _ = vox.shape
    for k in prange(nk):
        for j in range(nj):
            acc = 0.0
            for i in range(lo, hi):
                acc += vox[k, j, i]
            out[k, j] = acc / (hi - lo)


def reduce_last(vox, lo, hi, mode, out):
    """out[k, j] = mode (1 max, 2 min, 3 mean) of vox[k, j, lo:hi]; one kernel per mode (no branch
    in the inner loop, max/min in the stored dtype)."""
    (_max_last, _min_last, _mean_last)[mode - 1](vox, lo, hi, out)
