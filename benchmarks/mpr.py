"""MPR benchmark: reslicing a 512×512×300 int16 CT (synthetic, in memory) with app.dicom.volume,
against plain numpy fancy indexing and SimpleITK's ResampleImageFilter for the same planes.

Measured in this run, one process, all methods on the same volume (0.7 mm pixels, 1 mm slices):

- coronal / sagittal plane at 30 positions (stored values → HU on the plane, as the viewer does),
- oblique plane (coronal turned 30° about the feet–head axis, 512×512 px, trilinear):
  ours (numba kernel), scipy.ndimage.map_coordinates, SimpleITK ResampleImageFilter (linear),
  numpy nearest (fancy indexing),
- 20 mm MIP slab (coronal, sagittal, axial): ours (slice-by-slice maximum over a view),
  numpy (``vol[:, j0:j1, :].max(axis=1)``), SimpleITK (Extract + MaximumProjection),
- memory: peak RSS growth over the voxels while ours runs (before SimpleITK copies the volume).

Usage: python benchmarks/mpr.py [--slices 300] [--size 512] [--repeat 30]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOALS = {"coronal": 5.0, "sagittal": 5.0, "oblique": 15.0, "MIP 20 mm coronal": 15.0,
         "MIP 20 mm sagittal": 15.0, "MIP 20 mm axial": 15.0}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phantom(n: int, size: int, seed: int = 0) -> np.ndarray:
    """int16 CT-like stored values (HU + 1024): a body ellipse, lungs, a bright spine, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (x / 0.42) ** 2 + (y / 0.32) ** 2 < 1
    lungs = ((np.abs(x) - 0.18) / 0.12) ** 2 + (y / 0.2) ** 2 < 1
    spine = (x / 0.04) ** 2 + ((y - 0.2) / 0.04) ** 2 < 1
    base = np.where(body, 1024 + 40, 0).astype(np.int16)
    base[lungs] = 1024 - 800
    base[spine] = 1024 + 700
    vol = np.empty((n, size, size), dtype=np.int16)
    noise = rng.normal(0, 12, (8, size, size)).astype(np.int16)
    for k in range(n):
        vol[k] = base + noise[k % 8]
    return vol


def timed(fn, args_list) -> tuple[float, float]:
    fn(args_list[0])  # warm-up
    times = []
    for a in args_list:
        t0 = time.perf_counter()
        fn(a)
        times.append((time.perf_counter() - t0) * 1000)
    t = np.array(times)
    return float(t.mean()), float(np.percentile(t, 95))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()

    import scipy.ndimage  # noqa: F401 - imported before the RSS baseline

    from app.dicom.model import Geometry, Series, Volume, Window
    from app.dicom.volume import reslicable

    n, size, reps = args.slices, args.size, args.repeat
    base_rss = _rss_mb()
    frames = phantom(n, size)
    vox_mb = frames.nbytes / 2**20
    sp = 0.7
    geometry = Geometry(origins=np.array([[-size * sp / 2, -size * sp / 2, -1.0 * k] for k in range(n)]),
                        row_direction=np.array([1.0, 0, 0]), col_direction=np.array([0, 1.0, 0]), spacing=(sp, sp))
    volume = Volume(Series("1", 1, "bench", "CT"), frames, np.ones(n), np.full(n, -1024.0), geometry,
                    Window(400, 40), loaded=n)
    after_vol = _rss_mb()
    rv = reslicable(volume)
    assert np.shares_memory(rv.voxels, frames)
    rng = np.random.default_rng(1)
    js = [int(x) for x in rng.integers(0, size, reps)]
    ks = [int(x) for x in rng.integers(0, n, reps)]
    theta = np.radians(30)
    normal = np.array([np.sin(theta), np.cos(theta), 0.0])
    centre = rv.center()
    obl = rv.oblique_plane(centre, normal, up=[0, 0, -1], size_mm=size * sp, pixel_mm=sp)

    rows: list[tuple[str, str, float, float]] = []
    import tracemalloc

    rv.sample(obl)  # numba compiles the kernels on first use (cached on disk): not timed
    rv.reslice("sagittal", 0, slab_mm=20, mode="mip")
    after_compile = _rss_mb()
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc

    def add(what, method, fn, args_list):
        mean, p95 = timed(fn, args_list)
        rows.append((what, method, mean, p95))

    # ---- ours
    add("coronal", "ours (view + HU on plane)", lambda j: rv.reslice("coronal", j).values(), js)
    add("sagittal", "ours (view + HU on plane)", lambda j: rv.reslice("sagittal", j).values(), js)
    add("oblique", "ours (numba trilinear, 2 threads)", lambda _: rv.sample(obl).values(), list(range(reps)))
    add("MIP 20 mm coronal", "ours", lambda j: rv.reslice("coronal", j, slab_mm=20, mode="mip").values(), js)
    add("MIP 20 mm sagittal", "ours", lambda j: rv.reslice("sagittal", j, slab_mm=20, mode="mip").values(), js)
    add("MIP 20 mm axial", "ours", lambda k: rv.reslice("axial", k, slab_mm=20, mode="mip").values(), ks)
    peak_ours = _rss_mb()
    arrays_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    # ---- numpy fancy indexing
    ii = np.arange(size)
    kk = np.arange(n)
    add("coronal", "numpy fancy indexing", lambda j: frames[kk[:, None], j, ii[None, :]][::-1].astype(np.float32) - 1024, js)
    add("sagittal", "numpy fancy indexing", lambda j: frames[kk[:, None], ii[None, :], j][::-1].astype(np.float32) - 1024, js)
    r = np.arange(obl.shape[0])[:, None]
    c = np.arange(obl.shape[1])[None, :]
    b = rv._array_index(obl.origin)
    dr = rv._array_step(obl.v * obl.spacing[0])
    dc = rv._array_step(obl.u * obl.spacing[1])

    def np_oblique(_):
        idx = [np.clip(np.rint(b[a] + dr[a] * r + dc[a] * c).astype(np.intp), 0, frames.shape[a] - 1) for a in range(3)]
        return frames[idx[0], idx[1], idx[2]].astype(np.float32) - 1024

    add("oblique", "numpy fancy indexing (nearest)", np_oblique, list(range(max(5, reps // 3))))
    from scipy.ndimage import map_coordinates

    def sp_oblique(_):
        coords = np.stack([(b[a] + dr[a] * r + dc[a] * c).astype(np.float32) for a in range(3)])
        return map_coordinates(frames, coords, output=np.float32, order=1, mode="nearest", prefilter=False) - 1024

    add("oblique", "scipy map_coordinates (trilinear)", sp_oblique, list(range(max(5, reps // 3))))
    m = int(round(20 / sp))
    add("MIP 20 mm coronal", "numpy max over a slice range",
        lambda j: frames[:, max(0, j - m // 2):j - m // 2 + m, :].max(axis=1).astype(np.float32) - 1024, js)
    add("MIP 20 mm sagittal", "numpy max over a slice range",
        lambda j: frames[:, :, max(0, j - m // 2):j - m // 2 + m].max(axis=2).astype(np.float32) - 1024, js)
    add("MIP 20 mm axial", "numpy max over a slice range",
        lambda k: frames[max(0, k - 10):k + 10].max(axis=0).astype(np.float32) - 1024, ks)

    # ---- SimpleITK (copies the volume into an ITK image first; not timed)
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(frames)
    img.SetSpacing((sp, sp, 1.0))
    img.SetOrigin(tuple(geometry.origins[0]))
    img.SetDirection(tuple(rv.direction.reshape(-1)))

    def sitk_plane(plane, interp=sitk.sitkLinear):
        f = sitk.ResampleImageFilter()
        f.SetOutputOrigin(tuple(plane.origin))
        f.SetOutputSpacing((plane.spacing[1], plane.spacing[0], 1.0))
        f.SetOutputDirection(tuple(np.stack([plane.u, plane.v, plane.normal], axis=1).reshape(-1)))
        f.SetSize((plane.shape[1], plane.shape[0], 1))
        f.SetInterpolator(interp)
        f.SetOutputPixelType(sitk.sitkFloat32)
        return sitk.GetArrayViewFromImage(f.Execute(img))[0] - 1024

    add("coronal", "SimpleITK ResampleImageFilter (nearest)",
        lambda j: sitk_plane(rv.plane("coronal", j), sitk.sitkNearestNeighbor), js[: max(5, reps // 3)])
    add("sagittal", "SimpleITK ResampleImageFilter (nearest)",
        lambda j: sitk_plane(rv.plane("sagittal", j), sitk.sitkNearestNeighbor), js[: max(5, reps // 3)])
    add("oblique", "SimpleITK ResampleImageFilter (linear)", lambda _: sitk_plane(obl), list(range(max(5, reps // 3))))

    def sitk_mip(j, axis):
        lo = max(0, j - m // 2)
        idx = [0, 0, 0]
        sz = list(img.GetSize())
        idx[axis], sz[axis] = lo, min(m, sz[axis] - lo)
        return sitk.GetArrayViewFromImage(sitk.MaximumProjection(sitk.Extract(img, sz, idx), axis))

    add("MIP 20 mm coronal", "SimpleITK Extract + MaximumProjection", lambda j: sitk_mip(j, 1), js[: max(5, reps // 3)])
    add("MIP 20 mm sagittal", "SimpleITK Extract + MaximumProjection", lambda j: sitk_mip(j, 0), js[: max(5, reps // 3)])

    growth = (peak_ours - after_vol) / vox_mb
    print(f"\nMPR on {n}×{size}×{size} int16 ({vox_mb:.0f} MB of voxels), {reps} positions per row, "
          f"{sys.platform}, numpy {np.__version__}, SimpleITK {sitk.Version_VersionString()}\n")
    print("| plane | method | mean ms | p95 ms | goal p95 |")
    print("|---|---|---:|---:|---|")
    for what, method, mean, p95 in rows:
        goal = GOALS.get(what) if method.startswith("ours") else None
        ok = "" if goal is None else f"≤ {goal:g} ms {'✓' if p95 <= goal else '✗'}"
        print(f"| {what} | {method} | {mean:.2f} | {p95:.2f} | {ok} |")
    print(f"\nMemory: voxels {vox_mb:.0f} MB (RSS +{after_vol - base_rss:.0f} MB to build them); "
          f"peak RSS growth while ours resliced: +{peak_ours - after_vol:.0f} MB = {growth:.2f}× the voxels "
          f"(goal ≤ 2×), of which +{after_compile - after_vol:.0f} MB is numba compiling the kernels once; "
          f"peak of the arrays ours allocated: {arrays_peak_mb:.1f} MB (tracemalloc); reslicable() shares "
          f"the voxels (no copy). SimpleITK then copies the volume (peak RSS now {_rss_mb():.0f} MB).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
