"""Microphone button with a live level meter: push-to-talk dictation.

Hold the configured key (default F4, anywhere in the application) or the
button, speak, release: the audio is transcribed off the UI thread and the
widget emits ``text_ready(text, target)`` (``target`` is ``"query"`` or
``"report"``) or ``command(id)`` for a voice command. Pressing again while a
transcription runs cancels it. Without a usable microphone the button is
disabled and its tooltip says why; pressing the push-to-talk key then puts the
same reason in the status bar (``status``), so the key never fails silently. The
button shows a microphone (:func:`microphone_icon`, drawn here: no icon files).

All decisions (text rules, commands) are :class:`app.dictation.text.Dictation`'s;
capture and recognition are :mod:`inference.speech`'s. This module only wires
them to Qt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QIcon,
    QKeySequence,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QToolButton,
    QWidget,
)

from app.core.errors import XMedError
from app.dictation.text import TARGETS, Dictation, DictationResult
from inference.speech.capture import MicrophoneRecorder, Recording, meter_fraction
from inference.speech.engines import Recognizer

log = logging.getLogger(__name__)


class AudioSource(Protocol):
    def unavailable_reason(self) -> str | None: ...
    def start(self) -> None: ...
    def stop(self) -> Recording: ...


#: Builds a source given the level and length-limit callbacks (called from the audio thread).
SourceFactory = Callable[[Callable[[float], None], Callable[[], None]], AudioSource]


def microphone_factory(device: str | int | None = None, max_seconds: float = 120.0) -> SourceFactory:
    return lambda on_level, on_limit: MicrophoneRecorder(device, max_seconds=max_seconds,
                                                         on_level=on_level, on_limit=on_limit)


def microphone_pixmap(size: int, colour: QColor) -> QPixmap:
    """A studio microphone, drawn: a capsule on a U-shaped holder, a stem and a foot."""
    pm = QPixmap(size, size)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    u = size / 16.0
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(colour)
    p.drawRoundedRect(QRectF(5.5 * u, 1 * u, 5 * u, 8.5 * u), 2.5 * u, 2.5 * u)  # capsule
    pen = QPen(colour, 1.3 * u)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush)
    holder = QPainterPath()
    holder.moveTo(3.5 * u, 6 * u)  # the U around the capsule's foot: left arm, bow, right arm
    holder.lineTo(3.5 * u, 7.5 * u)
    holder.arcTo(QRectF(3.5 * u, 3 * u, 9 * u, 9 * u), 180, 180)
    holder.lineTo(12.5 * u, 6 * u)
    p.drawPath(holder)
    p.drawLine(QPointF(8 * u, 12 * u), QPointF(8 * u, 14.2 * u))  # stem
    p.drawLine(QPointF(5.2 * u, 14.6 * u), QPointF(10.8 * u, 14.6 * u))  # foot
    p.end()
    return pm


def microphone_icon(colour: QColor | None = None) -> QIcon:
    """The Dictate button's icon at the sizes toolbars use (Qt greys it when the button is disabled)."""
    colour = colour or QColor(216, 216, 216)  # the dark theme's text colour
    icon = QIcon()
    for size in (16, 20, 24, 32, 48):
        icon.addPixmap(microphone_pixmap(size, colour))
    return icon


class _Job:
    def __init__(self) -> None:
        self.cancelled = False


class DictationWidget(QWidget):
    """A microphone button, a level meter and a one-word state label."""

    text_ready = Signal(str, str)  # text, target ("query" / "report")
    command = Signal(str)  # voice command id (resources/dictation/commands.yaml)
    status = Signal(str)  # one line for the status bar (errors included)
    state_changed = Signal(str)  # "idle", "recording", "transcribing", "unavailable"

    _level = Signal(float)
    _limit = Signal()
    _done = Signal(object, object)  # job, DictationResult | XMedError

    def __init__(self, recognizer: Recognizer, dictation: Dictation | None = None, *,
                 source_factory: SourceFactory | None = None, key: str = "F4", target: str = "report",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.recognizer = recognizer
        self.dictation = dictation or Dictation()
        self._factory = source_factory or microphone_factory()
        self._target = "report"
        self._source: AudioSource | None = None
        self._job: _Job | None = None
        self._state = "idle"
        self._reason: str | None = None
        self._key = 0
        self._key_name = ""
        #: After text for the query box, also emit ``command("ask_assistant")`` (Settings: auto-Ask).
        self.auto_ask = False

        self.button = QToolButton(self)
        self.button.setIcon(microphone_icon())
        self.button.setText("Dictate")
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setCheckable(False)
        self.button.pressed.connect(self.press)
        self.button.released.connect(self.release)
        self.meter = QProgressBar(self)
        self.meter.setRange(0, 100)
        self.meter.setTextVisible(False)
        self.meter.setFixedSize(80, 10)
        self.meter.setAccessibleName("Microphone level")
        self.label = QLabel("", self)
        # room for the longest state text, so the toolbar does not jump as the state changes
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("Transcribing…") + 6)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(2, 0, 2, 0)
        layout.addWidget(self.button)
        layout.addWidget(self.meter)
        layout.addWidget(self.label)

        self._level.connect(lambda db: self.meter.setValue(int(100 * meter_fraction(db))))
        self._limit.connect(self._on_limit)
        self._done.connect(self._on_done)
        self.set_key(key)
        self.set_target(target)
        app = _app()
        if app is not None:
            app.installEventFilter(self)
        self.refresh()

    # ---- configuration ------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def target(self) -> str:
        return self._target

    def set_target(self, target: str) -> None:
        """Where dictated text goes: "query" (the assistant's box) or "report" (at the cursor)."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}")
        self._target = target
        self._update_tooltip()

    def set_key(self, key: str) -> None:
        """The push-to-talk key as a QKeySequence string ("F4", "F9", "Pause", …)."""
        sequence = QKeySequence(key)
        if sequence.isEmpty():
            raise ValueError(f"not a key: {key!r}")
        self._key = sequence[0].key()
        self._key_name = sequence.toString()
        self._update_tooltip()

    def set_source_factory(self, factory: SourceFactory) -> None:
        """A new device choice (Settings); takes effect from the next press."""
        self._factory = factory
        self.refresh()

    def refresh(self) -> str | None:
        """Check the microphone again; disable the button with the reason when it cannot record."""
        self._reason = self._factory(lambda _db: None, lambda: None).unavailable_reason()
        self.button.setEnabled(self._reason is None)
        if self._reason is not None:
            self._set_state("unavailable")
        elif self._state == "unavailable":
            self._set_state("idle")
        self._update_tooltip()
        return self._reason

    def warm_up(self) -> None:
        """Load the speech model in the background so the first release is fast."""
        threading.Thread(target=self._load_quietly, name="whisper-load", daemon=True).start()

    # ---- push-to-talk -------------------------------------------------------------
    def press(self) -> None:
        if self._reason is not None:  # the key was pressed, the button is disabled: say why, every time
            self.status.emit(self._reason)
            return
        if self._source is not None:
            return
        if self._job is not None:  # a new utterance replaces the one still being transcribed
            self._job.cancelled = True
            self._job = None
        source = self._factory(self._level.emit, self._limit.emit)
        try:
            source.start()
        except XMedError as exc:
            self.status.emit(str(exc))
            self.refresh()
            return
        self._source = source
        self._set_state("recording")

    def release(self) -> None:
        source, self._source = self._source, None
        if source is None:
            return
        self.meter.setValue(0)
        try:
            recording = source.stop()
        except XMedError as exc:
            self.status.emit(str(exc))
            self._set_state("idle")
            return
        if recording.seconds < 0.1:
            self.status.emit("Nothing was heard; hold the key while you speak.")
            self._set_state("idle")
            return
        if recording.hit_max_length:
            self.status.emit("Dictation reached its maximum length and was stopped.")
        job = self._job = _Job()
        self._set_state("transcribing")
        threading.Thread(target=self._transcribe, args=(job, recording.audio, self._target),
                         name="whisper-transcribe", daemon=True).start()

    def cancel(self) -> None:
        """Drop the recording or transcription in progress; nothing is emitted for it."""
        if self._source is not None:
            source, self._source = self._source, None
            source.stop()
        if self._job is not None:
            self._job.cancelled = True
            self._job = None
        self.meter.setValue(0)
        self._set_state("idle" if self._reason is None else "unavailable")

    # ---- worker side ----------------------------------------------------------------
    def _load_quietly(self) -> None:
        try:
            self.recognizer.load()
        except XMedError as exc:
            log.warning("speech model not loaded: %s", exc)

    def _transcribe(self, job: _Job, audio: np.ndarray, target: str) -> None:
        try:
            transcript = self.recognizer.transcribe(audio, initial_prompt=self.dictation.initial_prompt,
                                                    cancel=lambda: job.cancelled)
            log.info("dictation: %.1f s audio in %.2f s: %r", transcript.audio_seconds,
                     transcript.decode_seconds, transcript.text)
            outcome: object = None if transcript.cancelled else self.dictation.handle(transcript.text, target)
        except XMedError as exc:
            outcome = exc
        try:
            self._done.emit(job, outcome)
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _on_done(self, job: _Job, outcome: DictationResult | XMedError | None) -> None:
        if job is not self._job or job.cancelled:
            return
        self._job = None
        if self._source is None:
            self._set_state("idle")
        if isinstance(outcome, XMedError):
            self.status.emit(str(outcome))
        elif isinstance(outcome, DictationResult):
            if outcome.is_command:
                self.status.emit(f"Voice command: {outcome.raw.strip()}")
                self.command.emit(outcome.command or "")
            elif outcome.text:
                self.text_ready.emit(outcome.text, outcome.target)
                if self.auto_ask and outcome.target == "query":
                    self.command.emit("ask_assistant")
            else:
                self.status.emit("No words were recognised.")

    def _on_limit(self) -> None:
        if self._source is not None:
            self.release()

    # ---- Qt plumbing ---------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        kind = event.type()
        if kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and event.key() == self._key:
            if event.isAutoRepeat():
                return True
            if kind == QEvent.Type.KeyPress:
                self.press()
            else:
                self.release()
            return True
        return False

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.label.setText({"recording": "Listening…", "transcribing": "Transcribing…"}.get(state, ""))
            self.state_changed.emit(state)

    def _update_tooltip(self) -> None:
        if self._reason is not None:
            tip = self._reason
        else:
            where = "the assistant's query box" if self._target == "query" else "the report at the cursor"
            tip = (f"Hold {self._key_name} (or this button), speak, release: text goes into {where}. "
                   f"Say “new paragraph”, “period”, or a voice command such as “next image”.\n"
                   f"Speech recognition: {self.recognizer.describe()}")
        self.button.setToolTip(tip)
        self.setToolTip(tip)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cancel()
        app = _app()
        if app is not None:
            app.removeEventFilter(self)
        super().closeEvent(event)


def _app():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance()
