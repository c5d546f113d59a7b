"""The frontal radiograph projection: a lesion changes only the pixels inside its box."""

from __future__ import annotations

import numpy as np

from app.synthetic.anatomy import Anatomy, Lesion
from app.synthetic.xray import add_xray_lesions, render_xray


def test_radiograph_lesion_changes_only_the_pixels_inside_its_box():
    anatomy = Anatomy()
    base = render_xray(anatomy, 160)
    lesion = Lesion("L1", "lung", "right middle zone", "right", "nodule", -70.0, 0.0, 150.0, 9.0, 9.0, 9.0, 40.0)
    with_lesion = add_xray_lesions(base, [lesion])
    changed = np.abs(with_lesion.values - base.values) > 1e-6
    x0, y0, x1, y1 = with_lesion.boxes["L1"]
    inside = np.zeros_like(changed)
    inside[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = True
    assert changed.any() and not (changed & ~inside).any()
    assert changed[y0:y1, x0].any() and changed[y0:y1, x1 - 1].any()
    assert (x0 + x1) / 2 < 80  # the patient's right lung is on the image left
    assert abs((x1 - x0) * 400 / 160 - 18.0) <= 2 * 400 / 160  # 18 mm across
