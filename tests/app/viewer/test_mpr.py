"""MPR state without Qt: the crosshair moves the other planes, exact to a voxel; reference lines;
slabs and rotation; ``xmedgpt render --plane … --slab … --mode …`` against a numpy reference."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from app.cli import main
from app.dicom.png import read_png
from app.dicom.volume import reslicable
from app.synthetic.sample import write_ct_study
from app.viewer.mpr import MprState, clip_line
from tests.app.dicom.test_volume import _grid_volume


@pytest.fixture()
def state():
    return MprState(reslicable(_grid_volume(n=12, rows=20, cols=24)))


def test_click_in_axial_moves_coronal_and_sagittal_not_axial(state):
    k = state.index("axial")
    state.set_from_pixel("axial", 5, 13)
    assert state.index("axial") == k
    assert state.index("sagittal") == 5 and state.index("coronal") == 13
    # the crosshair sits on the clicked pixel in the clicked view, and on the right pixel of the others
    assert state.crosshair("axial") == pytest.approx((5, 13))
    c, r = state.crosshair("coronal")
    assert (round(c), round(r)) == (5, k) and c == pytest.approx(5) and r == pytest.approx(k)
    c, r = state.crosshair("sagittal")
    assert (c, r) == (pytest.approx(13), pytest.approx(k))
    # click in the coronal moves axial and sagittal, not coronal
    state.set_from_pixel("coronal", 20, 3)
    assert state.index("coronal") == 13 and state.index("sagittal") == 20 and state.index("axial") == 3


def test_crosshair_voxel_is_the_same_voxel_in_every_view():
    vol = _grid_volume(n=12, rows=20, cols=24)
    st = MprState(reslicable(vol))
    rng = np.random.default_rng(4)
    for _ in range(30):
        view = ("axial", "coronal", "sagittal")[int(rng.integers(3))]
        rows, cols = st.plane(view).shape
        st.set_from_pixel(view, int(rng.integers(cols)), int(rng.integers(rows)))
        i, j, k = st.volume.voxel_of(st.point)
        for v in ("axial", "coronal", "sagittal"):
            c, r = st.crosshair(v)
            assert int(st.image(v).stored[int(round(r)), int(round(c))]) == int(vol.frames[k, j, i]), v


def test_reference_lines_cross_at_the_crosshair(state):
    state.set_from_pixel("axial", 7, 11)
    lines = {ln.of: ln for ln in state.reference_lines("axial")}
    assert set(lines) == {"coronal", "sagittal"}
    cor, sag = lines["coronal"], lines["sagittal"]
    # the coronal plane is the horizontal line at row 11 across the axial image, the sagittal the vertical at col 7
    assert cor.p0[1] == pytest.approx(11) and cor.p1[1] == pytest.approx(11)
    assert sorted([cor.p0[0], cor.p1[0]]) == pytest.approx([-0.5, 23.5])
    assert sag.p0[0] == pytest.approx(7) and sag.p1[0] == pytest.approx(7)
    k = state.index("axial")
    lines = {ln.of: ln for ln in state.reference_lines("coronal")}
    assert lines["axial"].p0[1] == pytest.approx(k) and lines["sagittal"].p0[0] == pytest.approx(7)
    # with a slab, each line gets its two edges half the slab away (in pixels of this view)
    state.set_slab(3.0, "mip")  # 5 rows of 0.6 mm… columns are 0.6 mm, rows 0.8 mm
    lines = {ln.of: ln for ln in state.reference_lines("axial")}
    edges = sorted(e[0][1] for e in lines["coronal"].edges)  # coronal slab: rows (0.8 mm) in the axial view
    assert edges == pytest.approx([11 - 2.0, 11 + 2.0])  # 4 rows = 3.2 mm: ±1.6 mm = ±2 rows


def test_scroll_slab_steps_and_rotation(state):
    k = state.index("coronal")
    state.scroll("coronal", 2)
    assert state.index("coronal") == k + 2
    state.scroll("coronal", -100)
    assert state.index("coronal") == 0  # clamped
    assert state.step_slab(+1) == 2.0 and state.step_slab(+1) == 5.0 and state.cycle_mode() == "minip"
    img = state.image("sagittal")
    assert img.mode == "minip" and img.slab_mm > 0
    state.set_slab(0)
    state.rotate(30)
    assert state.is_oblique("coronal") and not state.is_oblique("axial")
    pl = state.plane("coronal")
    # rotated about the axial normal: still perpendicular to the axial plane, 30° from the coronal
    assert abs(pl.normal @ state.plane("axial").normal) < 1e-9
    assert abs(abs(pl.normal @ np.array([0, 1.0, 0])) - np.cos(np.radians(30))) < 1e-9
    c, r = state.crosshair("coronal")
    assert np.allclose(pl.pixel_to_patient(c, r), state.point)
    assert state.image("coronal").stored.dtype == np.float32
    assert "oblique 30°" in state.describe("coronal")


def test_clip_line():
    assert clip_line((5, 5), (1, 0), (0, 0, 10, 10)) == ((0, 5), (10, 5))
    assert clip_line((5, 50), (1, 0), (0, 0, 10, 10)) is None


def test_render_cli_coronal_mip_slab_equals_reference(tmp_path, capsys):
    folder = write_ct_study(tmp_path / "ct", n_slices=30, size=96, seed=5, noise_hu=0.0)
    out = tmp_path / "cor.png"
    assert main(["render", str(folder), "--plane", "coronal", "--slab", "20", "--mode", "mip",
                 "--window", "400/40", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "coronal" in said and "mip slab" in said
    got = read_png(out)
    # reference: pydicom, slices sorted by ImagePositionPatient along the normal (head first), numpy MIP
    dss = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    dss.sort(key=lambda ds: -float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in dss])
    rows = hu.shape[1]
    j = rows // 2
    m = int(round(20.0 / float(dss[0].PixelSpacing[0])))
    lo = j - (m - 1) // 2
    mip = hu[:, lo:lo + m, :].max(axis=1)
    lo_hu, w = 40 - 0.5, 400 - 1.0  # DICOM LINEAR window 400/40
    want = np.rint(np.clip((mip - lo_hu) / w + 0.5, 0, 1) * 255).astype(np.uint8)
    assert got.shape == want.shape == (30, 96)
    np.testing.assert_array_equal(got, want)


def test_render_cli_rejects_bad_slab(tmp_path, capsys):
    folder = write_ct_study(tmp_path / "ct", n_slices=4, size=32, seed=5)
    assert main(["render", str(folder), "--plane", "sagittal", "--slab", "nan", "--out", str(tmp_path / "x.png")]) != 0
    assert main(["render", str(folder), "--plane", "sagittal", "--slice", "99", "--out", str(tmp_path / "x.png")]) != 0
    assert not (tmp_path / "x.png").exists()


def test_oblique_views_keep_their_grid_while_the_crosshair_moves(state):
    state.rotate(20)
    before = state.plane("coronal")
    c, r = state.crosshair("coronal")
    state.set_from_pixel("coronal", c + 3.2, r - 2.0)
    after = state.plane("coronal")
    assert after.shape == before.shape  # parallel plane, same grid: the image does not jump under the mouse
    assert np.allclose(after.u, before.u) and np.allclose(after.v, before.v)
    assert state.crosshair("coronal") == (pytest.approx(c + 3.2), pytest.approx(r - 2.0))
    # the volume's outline fits: every corner voxel of the volume projects inside the image
    ni, nj, nk = state.volume.shape_ijk
    for ijk in ([0, 0, 0], [ni - 1, nj - 1, nk - 1], [ni - 1, 0, 0], [0, nj - 1, nk - 1]):
        cc, rr = after.patient_to_pixel(state.volume.index_to_patient(ijk))
        assert -0.5 <= cc <= after.shape[1] - 0.5 and -0.5 <= rr <= after.shape[0] - 0.5


def test_cached_geometry_follows_every_change_of_the_state(state):
    """Planes, crosshair pixels, reference lines and normals are computed once per crosshair / rotation /
    slab state (the views ask dozens of times a frame): each change gives the fresh values."""

    def fresh(view):
        other = MprState(state.volume, state.point)
        other.angle_deg, other.slab_mm, other.mode = state.angle_deg, state.slab_mm, state.mode
        other.point = state.point.copy()
        return other.plane(view), other.crosshair(view), other.reference_lines(view)

    changes = [lambda: state.set_from_pixel("axial", 3, 4), lambda: state.scroll("axial", 2),
               lambda: state.set_slice("coronal", 7), lambda: state.set_slab(10.0), lambda: state.cycle_mode(),
               lambda: state.rotate(30), lambda: state.scroll("coronal", 1), lambda: state.rotate(-30)]
    for change in changes:
        state.reference_lines("axial")  # fill the cache before the change
        change()
        for view in ("axial", "coronal", "sagittal"):
            plane, cross, refs = fresh(view)
            got = state.plane(view)
            assert np.allclose(got.origin, plane.origin) and np.allclose(got.u, plane.u) and got.shape == plane.shape
            assert state.crosshair(view) == pytest.approx(cross)
            assert state.reference_lines(view) == refs
            assert np.allclose(state.normal(view), got.normal)


def test_image_key_changes_exactly_when_the_image_does(state):
    keys = {v: state.image_key(v) for v in ("axial", "coronal", "sagittal")}
    state.scroll("axial", 1)  # the coronal and sagittal planes stay
    assert state.image_key("axial") != keys["axial"]
    assert state.image_key("coronal") == keys["coronal"] and state.image_key("sagittal") == keys["sagittal"]
    state.set_slab(5.0)
    assert all(state.image_key(v) != keys[v] for v in ("coronal", "sagittal"))
    state.set_slab(0.0)
    state.rotate(30)  # oblique: the key is the plane itself
    obl = state.image_key("coronal")
    state.scroll("axial", 1)
    assert state.image_key("coronal") == obl
    state.scroll("coronal", 2)
    assert state.image_key("coronal") != obl
    for view in ("axial", "coronal", "sagittal"):  # equal keys, equal pixels
        before, key = state.image(view).stored, state.image_key(view)
        state.scroll("axial" if view != "axial" else "coronal", 1)
        if state.image_key(view) == key:
            np.testing.assert_array_equal(state.image(view).stored, before)


def test_three_planes_go_side_by_side_unless_that_makes_narrow_strips():
    from app.viewer.mpr import AXIAL_BESIDE_STACK, SIDE_BY_SIDE, three_plane_cells

    assert three_plane_cells(1500, 600) == SIDE_BY_SIDE   # a wide area: three 500-px views
    assert three_plane_cells(1360, 690) == SIDE_BY_SIDE   # 1366-px screen, docks closed: 453 px beats 345
    assert three_plane_cells(530, 690) == AXIAL_BESIDE_STACK  # both docks open: 176-px strips or 265-px squares
    assert three_plane_cells(900, 600) == SIDE_BY_SIDE    # the turning point: width 1.5 x height
    assert three_plane_cells(890, 600) == AXIAL_BESIDE_STACK
