"""The box overlay layer the AI findings use: pixel coordinates in and out,
per-frame visibility, edits reported in pixel coordinates, highlight, colours."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPointF

from inference.types import Box
from ui.testing import image_to_widget, mouse_drag, synthetic_volume
from ui.viewer.overlays import SOURCE_COLORS
from ui.viewer.viewport import Viewport


@pytest.fixture
def vp(qtbot):
    w = Viewport()
    qtbot.addWidget(w)
    w.resize(640, 520)
    w.show()
    qtbot.waitExposed(w)
    w.set_volume(synthetic_volume(n=6, spacing=(0.5, 0.8)))
    return w


def test_round_trip_pixel_coordinates(vp):
    layer = vp.overlays
    box = Box(10.5, 20.25, 60.0, 90.75)
    i = layer.add_box(2, box, "nodule 12 mm", source="ai")
    assert layer.box(i) == box
    assert layer.frame_of(i) == 2 and layer.label_of(i) == "nodule 12 mm"
    # still the same pixels after rotating and flipping the display
    vp.trigger("rotate_cw")
    vp.trigger("flip_h")
    assert layer.box(i) == box


def test_box_drawn_over_its_pixels_on_screen(vp):
    i = vp.overlays.add_box(0, Box(100, 50, 200, 150), "x")
    roi = vp.overlays._entries[i].roi
    scene_rect = roi.mapRectToScene(roi.boundingRect())
    tl = vp.view.mapFromScene(scene_rect.topLeft())
    assert tl.x() == pytest.approx(image_to_widget(vp, 100, 50).x(), abs=1.5)
    assert tl.y() == pytest.approx(image_to_widget(vp, 100, 50).y(), abs=1.5)


def test_boxes_show_only_on_their_frame(vp):
    layer = vp.overlays
    a = layer.add_box(0, Box(1, 1, 20, 20), "a")
    b = layer.add_box(3, Box(5, 5, 30, 30), "b")
    assert layer.visible_ids() == [a]
    vp.set_slice(3)
    assert layer.visible_ids() == [b]
    assert layer.ids(3) == [b] and sorted(layer.ids()) == sorted([a, b])


def test_remove_clear_by_frame_and_source(vp):
    layer = vp.overlays
    a = layer.add_box(0, Box(1, 1, 20, 20), "a", source="ai")
    layer.add_box(0, Box(1, 1, 20, 20), "u", source="user")
    layer.add_box(1, Box(1, 1, 20, 20), "c", source="ai")
    layer.clear(frame=0, source="ai")
    assert a not in layer.ids() and len(layer.ids()) == 2
    layer.remove(layer.ids()[0])
    assert len(layer.ids()) == 1
    layer.clear()
    assert layer.ids() == []
    layer.remove("missing")  # no error


def test_given_id_is_kept_and_replaces(vp):
    layer = vp.overlays
    assert layer.add_box(0, Box(0, 0, 5, 5), "f1", box_id="finding-1") == "finding-1"
    layer.add_box(0, Box(10, 10, 50, 50), "f1 moved", box_id="finding-1")
    assert layer.ids() == ["finding-1"] and layer.box("finding-1") == Box(10, 10, 50, 50)


def test_moving_a_box_with_the_mouse_emits_new_pixel_box(qtbot, vp):
    layer = vp.overlays
    i = layer.add_box(0, Box(100, 60, 160, 120), "lesion")
    edits = []
    layer.box_edited.connect(lambda *a: edits.append(a))
    start = image_to_widget(vp, 130, 90)
    end = image_to_widget(vp, 160, 110)
    mouse_drag(vp.view.viewport(), start, end)
    assert edits, "box_edited must be emitted after a move"
    box_id, frame, box = edits[-1]
    assert (box_id, frame) == (i, 0)
    assert box.x0 == pytest.approx(130, abs=1.5) and box.y0 == pytest.approx(80, abs=1.5)
    assert box.width == pytest.approx(60) and box.height == pytest.approx(60)
    assert layer.box(i) == box


def test_resizing_a_box_by_its_corner_handle(qtbot, vp):
    layer = vp.overlays
    i = layer.add_box(0, Box(100, 60, 160, 120), "lesion")
    edits = []
    layer.box_edited.connect(lambda *a: edits.append(a))
    mouse_drag(vp.view.viewport(), image_to_widget(vp, 160, 120), image_to_widget(vp, 190, 150))
    box = edits[-1][2]
    assert (box.x0, box.y0) == pytest.approx((100, 60), abs=0.01)
    assert box.x1 == pytest.approx(190, abs=1.5) and box.y1 == pytest.approx(150, abs=2.5)


def test_read_only_boxes_do_not_move(qtbot, vp):
    layer = vp.overlays
    i = layer.add_box(0, Box(100, 60, 160, 120), "truth", source="truth", editable=False)
    mouse_drag(vp.view.viewport(), image_to_widget(vp, 130, 90), image_to_widget(vp, 160, 110))
    assert layer.box(i) == Box(100, 60, 160, 120)


def test_highlight_and_source_colours(vp):
    layer = vp.overlays
    a = layer.add_box(0, Box(1, 1, 20, 20), "a", source="ai")
    b = layer.add_box(0, Box(30, 30, 50, 50), "b", source="user")
    assert layer.color_of(a) == SOURCE_COLORS["ai"] != layer.color_of(b)
    pen_a = layer._entries[a].roi.currentPen.widthF()
    layer.highlight(a)
    assert layer.is_highlighted(a)
    assert layer._entries[a].roi.currentPen.widthF() > pen_a
    layer.highlight(b)
    assert not layer.is_highlighted(a) and layer._entries[a].roi.currentPen.widthF() == pen_a
    layer.set_source(a, "accepted")
    assert layer.color_of(a) == SOURCE_COLORS["accepted"]
    assert layer._entries[a].roi.currentPen.color().getRgb()[:3] == SOURCE_COLORS["accepted"]
    layer.highlight(None)
    assert layer.highlighted is None


def test_new_volume_clears_boxes(vp):
    vp.overlays.add_box(0, Box(1, 1, 20, 20), "a")
    vp.set_volume(synthetic_volume(n=3))
    assert vp.overlays.ids() == []


def _painted_label(vp, box_id: str):
    """The label as painted: its text item's rectangle in the view's pixels."""
    text = vp.overlays._entries[box_id].text
    return text.textItem.mapRectToScene(text.textItem.boundingRect()) if text.isVisible() else None


def test_labels_of_boxes_that_share_a_corner_do_not_cover_each_other(vp, qtbot):
    """A pre-read lesion accepted into the report has two boxes at one place (the pre-read's and the
    finding's): seen in a real window, their labels were drawn over each other. The later one goes up a line,
    at any zoom; it comes back down when the other goes."""
    layer = vp.overlays
    a = layer.add_box(1, Box(100, 80, 160, 140), "P3 · 65 mm · red ✓ accepted", source="preread")
    b = layer.add_box(1, Box(100, 80, 160, 140), "AI 1 · mass · red", source="accepted")
    c = layer.add_box(1, Box(300, 300, 330, 330), "AI 2 · nodule · amber", source="ai")  # far away: stays put
    vp.set_slice(1)
    for zoom in (1.0, 2.5, 0.6):
        vp.zoom_by(zoom)
        qtbot.wait(50)
        ra, rb = _painted_label(vp, a), _painted_label(vp, b)
        assert ra is not None and rb is not None
        assert not ra.intersects(rb), (zoom, ra, rb)
        assert rb.bottom() <= ra.top() + 1  # the later one above
        assert layer.label_rect(b).topLeft().y() == pytest.approx(rb.top(), abs=1.5)  # the layout sees what is painted
    assert layer._entries[c].text.anchor.y() == 1
    layer.remove(a)
    qtbot.wait(20)
    assert layer._entries[b].text.anchor.y() == 1  # alone again: back above its box


def test_no_box_colour_can_be_read_as_a_reliability_light():
    """An accepted finding with a red tier was drawn green (and the PDF's key image drew finding 1 amber): box colours
    say who drew a box and whether it is in the report, so none may share a hue with the light's green, amber or red
    (white and grey are not hues)."""
    import colorsys

    from ui.assistant.reliability_panel import LAMP_ON

    def hue_sat(rgb) -> tuple[float, float]:
        h, _, s = colorsys.rgb_to_hls(*(c / 255.0 for c in rgb))
        return h * 360.0, s

    from app.report.export.preread_pdf import BOX_COLOUR as PREREAD_PDF_BOX
    from ui.report.pdf_export import BOX_COLOURS

    lamps = [hue_sat(c.getRgb()[:3])[0] for c in LAMP_ON.values()]
    pdf = {f"pdf key image {n}": c.getRgb()[:3] for n, c in enumerate(BOX_COLOURS, 1)}
    pdf["pre-read pdf"] = PREREAD_PDF_BOX  # it drew every lesion's box red, whatever its tier
    for source, rgb in {**SOURCE_COLORS, **pdf}.items():
        hue, sat = hue_sat(rgb)
        if sat < 0.25 or max(rgb) - min(rgb) < 40:  # white, grey
            continue
        for lamp in lamps:
            gap = min(abs(hue - lamp), 360.0 - abs(hue - lamp))
            assert gap >= 30.0, (source, rgb, lamp)
