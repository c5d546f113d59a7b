"""A series of one image is not a problem (issue #20, item 10): the reader saw "⚠ 1 problem" for a
single-image series; the reason was a scan warning "single image: there are no other slices"."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from app.dicom.scan import scan
from ui.shell.main_window import MainWindow
from ui.study.browser import series_detail
from ui.study.problems_dialog import problem_rows


def test_a_single_image_series_has_no_problem_rows():
    result = scan([Path(get_testdata_file("CT_small.dcm"))])
    [series] = result.all_series()
    assert series.frame_count == 1
    assert problem_rows(result) == []
    assert "⚠" not in series_detail(series)


def test_opening_a_single_image_shows_no_problem_button(qtbot, tmp_path):
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    win.open_paths([Path(get_testdata_file("CT_small.dcm"))])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None, timeout=20_000)
    try:
        assert win.problem_rows() == []
        assert not win.problems_button.isVisible()
        assert win.grid.active.corner_text()["bottom_left"][0] == "Im 1/1"
    finally:
        win.shutdown()
