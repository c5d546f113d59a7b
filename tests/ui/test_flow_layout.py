"""The preset buttons' row wraps in a narrow dock instead of widening it (and with it taking the image's room)."""

from __future__ import annotations

from PySide6.QtWidgets import QPushButton, QWidget

from ui.flow_layout import FlowLayout


def test_buttons_wrap_and_the_minimum_is_the_widest_button(qtbot):
    host = QWidget()
    qtbot.addWidget(host)
    layout = FlowLayout(host, spacing=4)
    buttons = [QPushButton(t) for t in ("Describe findings", "Locate nodule", "Locate mass", "Draft report")]
    for b in buttons:
        layout.addWidget(b)
    widest = max(b.sizeHint().width() for b in buttons)
    row = sum(b.sizeHint().width() for b in buttons) + 3 * 4
    height = max(b.sizeHint().height() for b in buttons)
    assert layout.minimumSize().width() == max(b.minimumSizeHint().width() for b in buttons) <= widest
    assert layout.sizeHint().width() == row
    assert layout.heightForWidth(row) == height  # wide: one row
    assert layout.heightForWidth(widest) == 4 * height + 3 * 4  # as narrow as one button: one per row
    host.resize(row, height)
    host.show()
    qtbot.waitUntil(lambda: buttons[-1].isVisible())
    layout.setGeometry(host.rect())
    assert len({b.y() for b in buttons}) == 1 and buttons[0].x() == 0
    layout.setGeometry(host.rect().adjusted(0, 0, -(buttons[-1].sizeHint().width() + 4), 0))
    tops = [b.y() for b in buttons]
    assert tops[:3] == [0, 0, 0] and tops[3] == height + 4 and buttons[3].x() == 0  # the last one wrapped
    buttons[1].hide()  # hidden items take no place
    layout.setGeometry(host.rect())
    assert buttons[2].x() == buttons[0].sizeHint().width() + 4
