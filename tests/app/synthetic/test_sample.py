"""The synthetic CT study: valid DICOM, honest ground truth, visible lesions, reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, RLELossless

from app.cli import main
from app.core.errors import XMedError
from app.dicom.png import write_png
from app.synthetic.anatomy import Anatomy, Grid, Tissue, render_ct_slice
from app.synthetic.sample import (
    GROUND_TRUTH_NAME,
    ground_truth_lesions,
    ground_truth_path,
    load_ground_truth,
    plan_lesions,
    write_ct_study,
)

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "resources" / "sample" / "ct-demo"
BUNDLED_GT = REPO / "resources" / "sample" / "ct-demo.ground_truth.json"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_ct_study(tmp_path_factory.mktemp("ct"), n_slices=40, size=256, seed=3)


@pytest.fixture(scope="module")
def clean_study(tmp_path_factory) -> Path:
    """The same study without noise: every pixel a lesion changed is known exactly."""
    return write_ct_study(tmp_path_factory.mktemp("ct-clean"), n_slices=40, size=256, seed=3, noise_hu=0.0)


def _gt(folder: Path) -> dict:
    return load_ground_truth(folder)


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _dciodvfy(path: Path) -> list[str]:
    proc = subprocess.run([str(BIN / "dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))] + (
        [f"exit status {proc.returncode}"] if proc.returncode else [])


def test_series_reads_back_as_one_ct_series_in_patient_space(study):
    files = sorted(study.glob("*.dcm"))
    assert len(files) == 40
    datasets = [pydicom.dcmread(f) for f in files]
    assert {ds.SOPClassUID for ds in datasets} == {CTImageStorage}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 40
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    first = datasets[0]
    assert first.Modality == "CT" and first.BodyPartExamined == "CHEST"
    assert (first.Rows, first.Columns) == (256, 256)
    assert first.pixel_array.dtype == np.uint16 and int(first.RescaleIntercept) == -1024
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    steps = np.diff(z)
    assert np.allclose(steps, -float(first.SliceThickness), atol=1e-3)  # head to feet, evenly spaced
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, 41))
    # air around the body, soft tissue and bone inside it
    hu = _hu(datasets[20])
    assert abs(float(np.median(hu[5:20, 100:150])) + 1000) < 40
    assert hu.max() > 300


def test_every_file_passes_dciodvfy_without_errors_or_warnings(study, tmp_path):
    files = sorted(study.glob("*.dcm"))
    for f in (files[0], files[len(files) // 2], files[-1]):
        assert _dciodvfy(f) == [], f.name
    rle = write_ct_study(tmp_path, n_slices=2, size=64, seed=1, compress=True)
    for f in sorted(rle.glob("*.dcm")):
        assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == RLELossless
        assert _dciodvfy(f) == [], f.name


def test_series_is_consistent_across_files_for_dcentvfy(study):
    proc = subprocess.run([str(BIN / "dcentvfy"), *map(str, sorted(study.glob("*.dcm")))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Error" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_ground_truth_lists_lesions_of_different_sizes_in_lungs_and_liver(study):
    gt = _gt(study)
    lesions = gt["lesions"]
    assert len(lesions) >= 5
    assert {les["organ"] for les in lesions} == {"lung", "liver"}
    assert {les["side"] for les in lesions if les["organ"] == "lung"} == {"left", "right"}
    sizes = sorted(les["size_mm"] for les in lesions)
    assert sizes[0] <= 8 and sizes[-1] >= 25
    # 3-D: the larger lesions span several slices
    spans = {les["id"]: les["slices"][1] - les["slices"][0] + 1 for les in lesions}
    assert max(spans.values()) >= 3
    per_slice = [b for s in gt["slices"] for b in s["boxes"]]
    assert {b["lesion_id"] for b in per_slice} == {les["id"] for les in lesions}


def test_boxes_enclose_exactly_the_pixels_the_lesions_changed(clean_study):
    """Compare the written files with the anatomy rendered without lesions."""
    gt = _gt(clean_study)
    anatomy, grid = Anatomy(), Grid(256)
    step = gt["slice_spacing_mm"]
    checked = 0
    for entry in gt["slices"]:
        if not entry["boxes"]:
            continue
        ds = pydicom.dcmread(clean_study / entry["file"])
        hu = _hu(ds)
        base = np.rint(render_ct_slice(anatomy, -float(ds.ImagePositionPatient[2]), grid).hu)
        base[~grid.fov_mask] = -1024
        changed = np.abs(hu - np.clip(base, -1024, 3071)) > 8
        inside = np.zeros_like(changed)
        for b in entry["boxes"]:
            inside[b["y0"] - 1:b["y1"] + 1, b["x0"] - 1:b["x1"] + 1] = True  # one pixel of soft edge
            box_changed = changed[b["y0"]:b["y1"], b["x0"]:b["x1"]]
            # tight: the lesion reaches every edge of its box
            assert box_changed[0].any() and box_changed[-1].any(), entry["file"]
            assert box_changed[:, 0].any() and box_changed[:, -1].any(), entry["file"]
        assert not (changed & ~inside).any(), f"lesion pixels outside the boxes on {entry['file']}"
        assert abs(float(ds.ImagePositionPatient[2]) - entry["z_mm"]) < 1e-3 and step > 0
        checked += 1
    assert checked >= 5


def test_lesion_centre_in_patient_space_falls_in_its_box(study):
    gt = _gt(study)
    by_file = {s["file"]: s for s in gt["slices"]}
    for les in gt["lesions"]:
        x, y, z = les["center_patient_mm"]
        entry = min(gt["slices"], key=lambda s: abs(s["z_mm"] - z))
        ds = pydicom.dcmread(study / entry["file"], stop_before_pixels=True)
        ox, oy, _ = map(float, ds.ImagePositionPatient)
        col = (x - ox) / float(ds.PixelSpacing[1])
        row = (y - oy) / float(ds.PixelSpacing[0])
        box = next(b for b in by_file[entry["file"]]["boxes"] if b["lesion_id"] == les["id"])
        assert box["x0"] <= col + 0.5 <= box["x1"] and box["y0"] <= row + 0.5 <= box["y1"], les["id"]


def test_lesions_stand_out_from_the_tissue_around_them(study):
    gt = _gt(study)
    lesions = {les["id"]: les for les in gt["lesions"]}
    best: dict[str, tuple[int, dict, str]] = {}
    for entry in gt["slices"]:
        for b in entry["boxes"]:
            area = (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
            if area > best.get(b["lesion_id"], (0,))[0]:
                best[b["lesion_id"]] = (area, b, entry["file"])
    for lid, (_, b, name) in best.items():
        hu = _hu(pydicom.dcmread(study / name))
        w, h = b["x1"] - b["x0"], b["y1"] - b["y0"]
        core = hu[b["y0"] + h // 4:b["y1"] - h // 4, b["x0"] + w // 4:b["x1"] - w // 4]
        pad = max(3, w // 2)
        ring = hu[b["y0"] - pad:b["y1"] + pad, b["x0"] - pad:b["x1"] + pad].copy()
        ring[pad:pad + h, pad:pad + w] = np.nan
        contrast = float(np.mean(core)) - float(np.nanmedian(ring))
        need = 200.0 if lesions[lid]["organ"] == "lung" else 40.0
        assert abs(contrast) >= need, f"{lid}: {contrast:.0f} HU against its surroundings"


def test_same_seed_same_bytes_other_seed_other_study(tmp_path):
    a = write_ct_study(tmp_path / "a", n_slices=3, size=64, seed=5)
    b = write_ct_study(tmp_path / "b", n_slices=3, size=64, seed=5)
    c = write_ct_study(tmp_path / "c", n_slices=3, size=64, seed=6)
    for name in ("CT0002.dcm", GROUND_TRUTH_NAME):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert pydicom.dcmread(a / "CT0002.dcm").StudyInstanceUID != pydicom.dcmread(c / "CT0002.dcm").StudyInstanceUID


def test_impossible_request_is_a_readable_error(tmp_path):
    with pytest.raises(XMedError, match="at least 1 slice"):
        write_ct_study(tmp_path, n_slices=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(XMedError, match="Cannot create"):
        write_ct_study(blocker / "sub", n_slices=1, size=32)


def test_cli_sample_writes_the_study(tmp_path, capsys):
    rc = main(["sample", "--out", str(tmp_path / "s"), "--slices", "5", "--size", "64", "--seed", "2", "--rle"])
    assert rc == 0
    assert len(list((tmp_path / "s").glob("*.dcm"))) == 5
    assert (tmp_path / "s" / GROUND_TRUTH_NAME).is_file()
    assert "5 CT slices" in capsys.readouterr().out
    rc = main(["sample", "--out", str(tmp_path / "t"), "--slices", "2", "--size", "64",
               "--ground-truth", str(tmp_path / "t.json")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "t").iterdir()) == ["CT0001.dcm", "CT0002.dcm"]
    assert json.loads((tmp_path / "t.json").read_text())["dicom_folder"] == "t"


def test_bundled_sample_is_small_valid_and_matches_the_generator(tmp_path, output_dir):
    files = sorted(BUNDLED.glob("*.dcm"))
    assert len(files) == 32
    assert sorted(BUNDLED.iterdir()) == files  # DICOM only: the viewer opens it without complaints
    assert sum(f.stat().st_size for f in files) + BUNDLED_GT.stat().st_size <= 8 * 1024 * 1024
    assert ground_truth_path(BUNDLED) == BUNDLED_GT and _gt(BUNDLED)["dicom_folder"] == "ct-demo"
    with pytest.raises(XMedError, match="No lesion ground truth"):
        load_ground_truth(tmp_path / "nowhere")
    assert _dciodvfy(files[16]) == []
    fresh = write_ct_study(tmp_path, n_slices=32, size=512, seed=0, compress=True)
    for name in ("CT0007.dcm", "CT0017.dcm"):
        ours, theirs = pydicom.dcmread(BUNDLED / name), pydicom.dcmread(fresh / name)
        assert ours.SOPInstanceUID == theirs.SOPInstanceUID
        assert np.array_equal(ours.pixel_array, theirs.pixel_array), "bundled sample is stale: regenerate it"
    assert _gt(BUNDLED)["lesions"] == _gt(fresh)["lesions"]
    _save_preview(BUNDLED, output_dir / "sample_ct_demo.png")


def _save_preview(folder: Path, out: Path) -> None:
    """Lung and soft-tissue windows of the slices with lesions, boxes drawn, for a person to look at."""
    gt = _gt(folder)
    tiles = []
    for entry in gt["slices"]:
        if not entry["boxes"]:
            continue
        hu = _hu(pydicom.dcmread(folder / entry["file"]))
        pair = [np.clip((hu - (c - w / 2)) / w * 255, 0, 255).astype(np.uint8) for w, c in ((1500, -600), (400, 40))]
        rgb = np.repeat(np.hstack(pair)[:, :, None], 3, axis=2)
        for b in entry["boxes"]:
            for off in (0, hu.shape[1]):
                x0, y0, x1, y1 = b["x0"] + off - 2, b["y0"] - 2, b["x1"] + off + 1, b["y1"] + 1
                rgb[y0:y1 + 1, [x0, x0 + 1, x1 - 1, x1]] = (255, 60, 0)  # two pixels wide: survives
                rgb[[y0, y0 + 1, y1 - 1, y1], x0:x1 + 1] = (255, 60, 0)  # the halving below
        tiles.append(rgb[::2, ::2])
    write_png(out, np.vstack(tiles))


def test_plan_places_lesions_inside_their_organs():
    anatomy = Anatomy()
    grid = Grid(256)
    expected = {("lung", "right"): Tissue.LUNG_RIGHT, ("lung", "left"): Tissue.LUNG_LEFT,
                ("liver", "right"): Tissue.LIVER, ("liver", "left"): Tissue.LIVER}
    for seed in range(3):
        for les in plan_lesions(anatomy, seed):
            labels = render_ct_slice(anatomy, les.s, grid, table=False).labels  # anatomy without lesions
            col, row = int(grid.to_pixel(les.x)), int(grid.to_pixel(les.y))
            assert labels[row, col] == expected[(les.organ, les.side)], (seed, les.id)


@pytest.mark.slow
def test_full_size_study_writes_in_a_few_seconds(tmp_path):
    t0 = time.perf_counter()
    write_ct_study(tmp_path, n_slices=300, size=512, seed=0)
    elapsed = time.perf_counter() - t0
    assert len(list(tmp_path.glob("*.dcm"))) == 300
    assert elapsed < 20.0, f"300×512² took {elapsed:.1f} s"


@pytest.mark.parametrize("seed", [0, 2, 4, 11, 23])
def test_side_words_follow_the_coordinates(tmp_path, seed):
    """Issue #20.15: DICOM LPS, +x is the patient's left: a lesion centred at x > 0 is on the left,
    and its location says so (the bundled sample's L6 was a "right hepatic lobe" cyst at x +13 mm)."""
    gt = load_ground_truth(write_ct_study(tmp_path, n_slices=12, size=64, seed=seed))
    lesions = ground_truth_lesions(gt)
    assert lesions and all(les.center_patient_mm is not None for les in lesions)
    problems = [p for les in lesions for p in les.side_problems()]
    assert problems == [], problems
    for les in lesions:
        x = les.center_patient_mm[0]
        assert les.side == ("left" if x > 0 else "right") and les.side in les.location.split(), (seed, les)


def test_bundled_sample_sides_follow_the_coordinates():
    lesions = ground_truth_lesions(load_ground_truth(BUNDLED))
    assert [p for les in lesions for p in les.side_problems()] == []
    cyst = next(les for les in lesions if les.kind == "cyst")
    assert cyst.center_patient_mm[0] > 0 and cyst.location == "left hepatic lobe"
