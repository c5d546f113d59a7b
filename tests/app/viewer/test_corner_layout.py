"""Which corner lines a viewport of a given size shows (issue #20, item 4): in a small viewport
less important lines go first, numbers take a shorter form instead of being cut ("Th 10.3…"),
free text is cut with "…", and no line reaches into its neighbour or the orientation letter."""

from __future__ import annotations

import numpy as np
import pytest

from app.dicom.model import Geometry, Instance, Series, Volume, Window
from app.viewer.viewport import CornerLine, StudyInfo, corner_lines, fit_corner_lines

CHAR = 7.0  # a fixed-pitch measure: 7 units a character
LINE = 14.0


def width(text: str) -> float:
    return CHAR * len(text)


AXIAL = Geometry(
    origins=np.array([[-189.6, -189.6, -5.2 - 10.31 * k] for k in range(32)]),
    row_direction=np.array([1.0, 0.0, 0.0]),
    col_direction=np.array([0.0, 1.0, 0.0]),
    spacing=(0.74, 0.74),
)


def sample_like() -> tuple[Volume, StudyInfo]:
    """The corners of the bundled sample study (the reader saw them clipped in 2×2)."""
    inst = [Instance(path=f"/x/{i}.dcm", sop_instance_uid=str(i), sop_class_uid="1.2", rows=4, columns=4,
                     slice_thickness=10.31) for i in range(32)]
    series = Series(uid="1.2.3", number=2, description="Axial 10.31 mm portal venous", modality="CT", instances=inst)
    volume = Volume(series, np.zeros((32, 4, 4), np.int16), np.ones(32), np.full(32, -1024.0), AXIAL,
                    Window(400, 40), loaded=32)
    info = StudyInfo("PHANTOM^CHEST", "XMED-PHANTOM-0000", "19600101", "O", "20250101",
                     "CT CHEST ABDOMEN WITH CONTRAST (SYNTHETIC PHANTOM)")
    return volume, info


def lines_for(w: float, h: float, **kw):
    volume, info = sample_like()
    corners = corner_lines(volume, 16, Window(400, 40, "soft tissue"), 0.89, info)
    return corners, fit_corner_lines(corners, w, h, width, LINE, marker_width=3 * CHAR, gap=12, **kw)


def assert_rows_fit(shown: dict[str, list[str]], w: float, marker: float, gap: float = 12) -> None:
    """Left and right lines of a row never overlap, nor the top/bottom orientation letter."""
    for left, right, top in (("top_left", "top_right", True), ("bottom_left", "bottom_right", False)):
        lb, rb = shown[left], shown[right]
        for r in range(max(len(lb), len(rb))):
            lt = (lb[r] if top else lb[len(lb) - 1 - r]) if r < len(lb) else ""
            rt = (rb[r] if top else rb[len(rb) - 1 - r]) if r < len(rb) else ""
            if r == 0:  # the row of the top / bottom letter
                assert width(lt) <= (w - marker) / 2 - gap + 0.5 and width(rt) <= (w - marker) / 2 - gap + 0.5, (lt, rt)
            else:
                assert width(lt) + width(rt) + (gap if lt and rt else 0) <= w + 0.5, (lt, rt)


def test_a_large_viewport_shows_every_line_in_full():
    corners, shown = lines_for(1000, 900)
    assert shown == {k: [line.text for line in v] for k, v in corners.items()}


def test_a_2x2_viewport_shortens_numbers_instead_of_cutting_them():
    # about a quarter of the 1600 px window with the side panels open (the reader's "Th 10.3…")
    corners, shown = lines_for(300, 330)
    every = [line for block in shown.values() for line in block]
    assert shown["bottom_left"][0] == "Im 17/32"
    assert any(line.startswith("W 400") or line.startswith("W400") for line in shown["bottom_right"])
    assert not any(line.startswith(("W", "Th", "Pos", "Im", "Zoom")) and line.endswith("…") for line in every), every
    th = [line for line in shown["bottom_left"] if "10.31" in line]
    assert th, "the slice thickness stays, in full"
    assert any(line.startswith("Se 2: Axial 10.31 mm portal venous") for line in shown["top_right"]), (
        "the birth date beside it goes before the series description is cut")
    assert_rows_fit(shown, 300, 3 * CHAR)


def test_the_presets_name_goes_before_the_numbers_are_cut():
    levels = CornerLine("W 400  L 40 (soft tissue)", 0, shorter=("W 400  L 40", "W400 L40"))
    corners = {"bottom_left": [CornerLine("Im 17/32", 0)], "bottom_right": [levels]}
    assert fit_corner_lines(corners, 400, 300, width, LINE)["bottom_right"] == ["W 400  L 40 (soft tissue)"]
    assert fit_corner_lines(corners, 150, 300, width, LINE)["bottom_right"] == ["W 400  L 40"]
    assert fit_corner_lines(corners, 125, 300, width, LINE)["bottom_right"] == ["W400 L40"]


def test_a_small_viewport_drops_less_important_lines_before_cutting():
    corners, shown = lines_for(220, 150)
    rows = int((150 / 2 - LINE / 2) // LINE)
    assert all(len(block) <= rows for block in shown.values())
    # what stays is the most important line of each corner (the name beside the "A" is cut, last)
    assert shown["top_left"][0].startswith("PHANTOM, CH")
    assert shown["bottom_left"][0] == "Im 17/32"
    assert any(line.startswith("Se 2") for line in shown["top_right"])
    assert any(line.startswith("W") for line in shown["bottom_right"])
    # the birth date and the study description (rank 4 and 5) are gone before anything is cut
    everything = " ".join(line for block in shown.values() for line in block)
    assert "1960" not in everything and "CONTRAST" not in everything
    assert_rows_fit(shown, 220, 3 * CHAR)


@pytest.mark.parametrize("w, h", [(160, 160), (260, 200), (420, 380), (700, 300)])
def test_no_line_ever_overflows_its_room(w, h):
    _, shown = lines_for(w, h)
    assert_rows_fit(shown, w, 3 * CHAR)
    assert shown["bottom_left"] and shown["bottom_left"][0].startswith("Im")


def test_an_essential_line_with_no_shorter_form_is_cut_last():
    corners = {"top_left": [CornerLine("A VERY LONG PATIENT NAME INDEED", 0, elide=True)],
               "top_right": [CornerLine("extra", 3)]}
    shown = fit_corner_lines(corners, 140, 200, width, LINE)
    assert shown["top_left"][0].endswith("…") and width(shown["top_left"][0]) <= 140
    assert shown["top_right"] == [] or width(shown["top_left"][0]) + width(shown["top_right"][0]) <= 140
