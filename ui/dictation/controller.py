"""Push-to-talk dictation in the viewer: where dictated text goes and what voice commands do.

:class:`DictationController` puts the microphone widget
(:class:`ui.dictation.widget.DictationWidget`) in the status bar and wires it
to the window (:meth:`ui.shell.main_window.MainWindow.attach_dictation` creates it):

- F4 (Settings: ``dictation_key``) is push-to-talk anywhere in the window;
- the target follows the keyboard focus: the assistant's query box → text goes
  there (and is asked at once with Settings ``dictation_auto_ask``); the report's
  finding text or impression → text goes in at the cursor, fitted to what precedes
  it (:func:`app.dictation.text.fit_to_cursor`); elsewhere (the image) the last target stays;
- voice commands run the real actions: the shortcut table's actions on the active
  viewport ("next image", "lung window", "previous series"), the report panel's
  Accept / Reject / Sign, the assistant's Ask, and "scratch that" (undo the last
  dictated text);
- a spoken question for the query box, when the assistant's model can hear (audio
  post-training, :mod:`inference.engine.audio`) and Settings allow it
  (``spoken_query_audio``), is sent to the model as audio and asked at once
  (:mod:`app.assistant.spoken_query`); Whisper's transcript then only serves to recognise
  voice commands. Otherwise the transcript goes into the query box. The status bar
  says which path was used;
- status messages go to the status bar; without a microphone or speech model the
  button is disabled and its tooltip says why.

What text becomes and which utterance is a command is decided in
:mod:`app.dictation.text`; this module only routes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import QObject
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QApplication, QLineEdit, QPlainTextEdit, QWidget

from app.assistant.spoken_query import (
    HEARD_QUESTION,
    SpokenQuery,
    can_hear,
    choose_path,
    whisper_label,
)
from app.core.errors import XMedError
from app.core.settings import Settings
from app.dictation.text import Dictation, fit_to_cursor
from inference.speech.engines import DEFAULT_ENGINE, Recognizer, make_recognizer
from ui.actions import append_text
from ui.dictation.widget import DictationWidget, SourceFactory, microphone_factory

log = logging.getLogger(__name__)

STATUS_MS = 8000
#: Voice commands the report panel answers (the rest are shortcut-table actions or the assistant's).
REPORT_COMMANDS = ("accept_finding", "reject_finding", "sign_report")


class _NoRecognizer:
    """Stands in when the speech model cannot be found: the widget shows the reason, nothing runs."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def describe(self) -> str:
        return "unavailable"

    def load(self) -> None:
        return None

    def transcribe(self, *args, **kwargs):
        raise XMedError(self.reason)


class _Unavailable:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def unavailable_reason(self) -> str:
        return self.reason

    def start(self) -> None:
        raise XMedError(self.reason)

    def stop(self):
        raise XMedError(self.reason)


class _KeepsAudio:
    """The recogniser, remembering the last clip it was given (for the direct audio path)."""

    def __init__(self, recognizer) -> None:
        self.recognizer = recognizer
        self.model = getattr(recognizer, "model", None)
        self.last_audio = None

    def describe(self) -> str:
        return self.recognizer.describe()

    def load(self) -> None:
        self.recognizer.load()

    def transcribe(self, audio, initial_prompt=None, cancel=None):
        self.last_audio = audio
        return self.recognizer.transcribe(audio, initial_prompt=initial_prompt, cancel=cancel)


class _HeardAssistant:
    """Stands in for the assistant controller's Assistant for one question: asks the recorded audio."""

    def __init__(self, query: SpokenQuery, audio) -> None:
        self.query = query
        self.audio = audio

    def ask(self, volume, frame, window=None, question="", **kwargs):
        return self.query.ask(self.audio, volume, frame, window, **kwargs).answer


@dataclass
class _Inserted:
    """The last dictated text, for "scratch that"."""

    editor: QWidget
    start: int
    text: str
    before: str = ""  # the query box's text before (query target)


def make_dictation_recognizer(settings: Settings) -> Recognizer:
    """The recogniser Settings ask for: the bundled tiny.en unless ``dictation_model`` names another."""
    return make_recognizer(DEFAULT_ENGINE, settings.dictation_model or None,
                           language=settings.dictation_language or "en")


class DictationController(QObject):
    def __init__(self, window, settings: Settings | None = None, recognizer: Recognizer | None = None,
                 source_factory: SourceFactory | None = None, dictation: Dictation | None = None) -> None:
        super().__init__(window)
        self.window = window
        self.settings = settings if settings is not None else Settings.load()
        self.dictation = dictation or Dictation()
        s = self.settings
        reason = None
        if recognizer is None:
            try:
                recognizer = make_dictation_recognizer(s)
            except XMedError as exc:
                reason = f"Dictation is unavailable: {exc}"
        recognizer = _NoRecognizer(reason) if reason is not None else _KeepsAudio(recognizer)
        if reason is not None:
            source_factory = lambda _lv, _lim, r=reason: _Unavailable(r)  # noqa: E731
        elif source_factory is None:
            source_factory = microphone_factory(s.dictation_device or None)
        #: the push-to-talk key as Settings name it (Help shows it)
        self.key = s.dictation_key or "F4"
        try:
            self.widget = DictationWidget(recognizer, self.dictation, source_factory=source_factory,
                                          key=self.key, target="report")
        except ValueError:  # a push-to-talk key Qt cannot parse: the default, and say so
            self.key = "F4"
            self.widget = DictationWidget(recognizer, self.dictation, source_factory=source_factory, key="F4")
            self._status(f"The push-to-talk key '{s.dictation_key}' is not a key; F4 is used.")
        self.widget.setObjectName("dictation")
        self.widget.auto_ask = bool(s.dictation_auto_ask)
        self.widget.text_ready.connect(self.insert_text)
        self.widget.command.connect(self.run_command)
        self.widget.status.connect(self._status)
        self._editor: QPlainTextEdit | None = None  # the report text box dictated into last
        self._last: _Inserted | None = None
        self._sent_as_audio = False  # the utterance just went to the model as audio (auto-Ask must not re-ask)
        self.last_path: str | None = None  # the last spoken query's path, as the status bar said it
        # the status bar: always visible (the main toolbar overflows on narrower screens)
        window.statusBar().insertPermanentWidget(0, self.widget)
        app = QApplication.instance()
        if app is not None:
            app.focusChanged.connect(self._focus_changed)
        if reason is None:
            self.widget.warm_up()

    # ---- where text goes: the text targets panels register (ui.actions) --------------------------
    @property
    def _actions(self):
        return self.window.actions

    def _query_box(self) -> QLineEdit | None:
        widgets = self._actions.target_widgets("query")
        return widgets[0] if widgets else None

    def _report_editors(self) -> list[QPlainTextEdit]:
        return self._actions.target_widgets("report")

    def _focus_changed(self, _old: QWidget | None, new: QWidget | None) -> None:
        if new is None:
            return
        if new is self._query_box():
            self.widget.set_target("query")
        elif new in self._report_editors():
            self._editor = new
            self.widget.set_target("report")

    def set_target(self, target: str) -> None:
        self.widget.set_target(target)

    def insert_text(self, text: str, target: str) -> None:
        """The slot for ``text_ready``: into the query box, or into the report at the cursor."""
        self._sent_as_audio = False
        if target == "query":
            self._to_query(text)
        else:
            self._to_report(text)

    def _hearing_engine(self):
        """The assistant's engine when spoken queries go to it as audio now, else None."""
        controller = getattr(self.window, "assistant", None)
        engine = getattr(controller, "engine", None)
        if not self.settings.spoken_query_audio or not can_hear(engine) or not getattr(controller, "ready", False):
            return None
        return engine

    def _to_query(self, text: str) -> None:
        query = self._query_box()
        if query is None:
            self._status("There is no assistant in this window; the dictated question was not used.")
            return
        recognizer = self.widget.recognizer
        audio = getattr(recognizer, "last_audio", None)
        engine = self._hearing_engine()
        if engine is not None and audio is not None and self.ask_by_audio(engine, audio):
            return
        before = query.text()
        append_text(query, text)
        self._last = _Inserted(query, 0, query.text(), before)
        if getattr(recognizer, "model", None) is not None:
            self.last_path = f"Spoken query transcribed by {whisper_label(recognizer)}"
            self._status(f"{self.last_path}: “{text}”")

    def ask_by_audio(self, engine, audio) -> bool:
        """Ask the recorded question as audio through the assistant (its boxes, steps, report, reliability):
        the assistant's ask action runs with the heard audio in place of a typed question."""
        controller = self.window.assistant
        query_box = self._query_box()
        if query_box is None:
            return False
        query = SpokenQuery(engine, None, self.dictation, prefer_audio=True, assistant=controller.assistant)
        path = choose_path(engine, None, prefer_audio=True)
        own = controller.assistant
        controller.assistant = _HeardAssistant(query, audio)  # the next AskWorker takes this one
        try:
            query_box.setText(HEARD_QUESTION)
            asked = bool(self._actions.run("ask_assistant"))
        finally:
            controller.assistant = own
        if asked:
            self._sent_as_audio = self.widget.auto_ask  # the widget's auto-Ask follows: already asked
            self.last_path = path.describe()
            self._status(f"{self.last_path}.")
        return asked

    def _report_editor(self) -> QPlainTextEdit | None:
        editors = self._report_editors()
        if not editors:
            outcome = self._actions.run("start_report")  # dictating is starting the report
            if not outcome:
                return None
            editors = self._report_editors()
            if not editors:
                return None
        editor = self._editor if self._editor in editors else None
        if editor is None or editor.isReadOnly():
            impression = editors[-1]
            editor = impression if not impression.isReadOnly() else None
        return editor

    def _to_report(self, text: str) -> None:
        editor = self._report_editor()
        if editor is None:
            self._status("The report is signed; it cannot be changed. Add an addendum to dictate into it."
                         if self._report_editors()
                         else "Open a study first: dictated text goes into its report.")
            return
        cursor = editor.textCursor()
        start = cursor.selectionStart()
        whole = editor.toPlainText()
        before, after = whole[:start], whole[cursor.selectionEnd():]
        fitted = fit_to_cursor(text, before, self.dictation.abbreviations)
        if after[:1].isalnum() and fitted[-1:] not in (" ", "\n", "(", "-"):
            fitted += " "  # dictated in front of a word: keep the words apart
        cursor.insertText(fitted)
        editor.setTextCursor(cursor)
        editor.setFocus()
        self._editor = editor
        self._last = _Inserted(editor, start, fitted)

    def undo_dictation(self) -> bool:
        """"Scratch that": remove the last dictated text if it is still where it was put."""
        last, self._last = self._last, None
        if last is None:
            self._status("Nothing dictated to remove.")
            return False
        if isinstance(last.editor, QLineEdit):
            if last.editor.text() != last.text:
                self._status("The query was changed since; nothing removed.")
                return False
            last.editor.setText(last.before)
            return True
        editor: QPlainTextEdit = last.editor
        if editor.toPlainText()[last.start:last.start + len(last.text)] != last.text or editor.isReadOnly():
            self._status("The report was changed since; nothing removed.")
            return False
        cursor = editor.textCursor()
        cursor.setPosition(last.start)
        cursor.setPosition(last.start + len(last.text), QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        editor.setTextCursor(cursor)
        self._status("Removed the last dictated text.")
        return True

    # ---- voice commands: named actions (ui.actions) ------------------------------------------------
    def run_command(self, command: str) -> bool:
        """The slot for ``command``: run the action a voice command names. False when it cannot run now
        (the status bar says why)."""
        if command == "undo_dictation":
            return self.undo_dictation()
        if command == "ask_assistant" and self._sent_as_audio:  # auto-Ask after a question already sent as audio
            self._sent_as_audio = False
            return True
        if command == "ask_assistant" and "ask_assistant" not in self._actions:
            self._status("There is no assistant in this window.")
            return False
        if command in REPORT_COMMANDS and command not in self._actions:
            self._status("There is no draft report yet: ask the assistant or start a report.")
            return False
        outcome = self._actions.run(command)
        if not outcome:
            self._status(outcome.message if command in self._actions
                         else f"The voice command '{command}' does nothing in this window.")
        return bool(outcome)

    # ---- settings and plumbing -----------------------------------------------------------------
    def apply_settings(self, settings: Settings) -> None:
        """Settings changed: push-to-talk key, microphone, auto-Ask."""
        self.settings = settings
        try:
            self.widget.set_key(settings.dictation_key or "F4")
            self.key = settings.dictation_key or "F4"
        except ValueError:
            self._status(f"The push-to-talk key '{settings.dictation_key}' is not a key; the old one stays.")
        self.widget.auto_ask = bool(settings.dictation_auto_ask)
        if not isinstance(self.widget.recognizer, _NoRecognizer):
            self.widget.set_source_factory(microphone_factory(settings.dictation_device or None))

    def _status(self, text: str) -> None:
        self.window.statusBar().showMessage(text, STATUS_MS)

    def shutdown(self) -> None:
        app = QApplication.instance()
        if app is not None:
            try:
                app.focusChanged.disconnect(self._focus_changed)
            except (RuntimeError, TypeError):
                pass
        self.widget.cancel()
