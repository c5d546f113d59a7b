"""Runs the assistant off the UI thread: model loading, questions, the reliability pass.

:class:`AssistantController` is what the rest of the window talks to; the main
window exposes it as ``main_window.assistant`` (see
:meth:`ui.shell.main_window.MainWindow.attach_assistant`). Its signals:

- ``model_changed(str state, str text)``: ``state`` is "none", "loading", "ready"
  or "failed"; ``text`` the indicator ("demo model · CPU", "XMedGPT-8B · 4-bit ·
  RTX A4000", "No model configured — …", or the failure's message);
- ``model_progress(str message, float fraction)`` while a model loads;
- ``asking(object)``: an :class:`app.assistant.session.AskContext` whose answer starts;
- ``update(object)``: an :class:`app.assistant.ask.AssistantUpdate` per streamed piece;
- ``answer_ready(object)``: an :class:`app.assistant.session.AnswerResult` — the
  :class:`app.assistant.ask.AssistantAnswer` plus the volume, series and frame it refers
  to (``result.context.frame_ref(k)`` names the DICOM instance of slice k); also
  emitted for a cancelled answer (``answer.finish_reason == "cancelled"``);
- ``answer_failed(str)``: the message a reader sees (an error, never a traceback);
- ``reliability_started(object)``: the AnswerResult being checked;
- ``reliability_progress(str, float)``;
- ``reliability_ready(object)``: an :class:`app.assistant.session.ReliabilityResult`
  (the Reliability, the answer and context, and per-phrase (score, tier) in
  ``by_phrase``, keyed by :func:`inference.phrases.phrase_key`); a check stopped
  by Cancel arrives with state CANCELLED, one stopped because a new question was
  asked does not arrive at all (whenever its thread finishes); findings the guardrail
  flags are at most amber;
- ``busy_changed(bool)``.

The panel is ``main_window.assistant_panel`` (:class:`ui.assistant.panel.AssistantPanel`);
``ui.shell.assistant_setup.install_assistant(window, model_dir)`` creates both.

Everything that decides something lives in :mod:`app.assistant.session` and
:mod:`app.assistant.ask`; this module only moves work onto threads and back.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, QThread, Signal

from app.assistant.ask import Assistant
from app.assistant.session import (
    AnswerResult,
    AskContext,
    ModelChoice,
    NoModelError,
    ReliabilityResult,
    check_answer,
    device_for,
    engine_label,
    not_assessed,
    open_engine,
    quantization_for,
    tiers_by_phrase,
)
from app.assistant.spoken_query import with_hearing
from app.core.errors import XMedError
from app.core.settings import Settings
from inference.reliability.scoring import State
from inference.types import Engine
from ui.workers import WorkerSet

log = logging.getLogger(__name__)


def _message(exc: BaseException) -> str:
    if isinstance(exc, XMedError):
        return str(exc)
    return f"Unexpected error: {exc}"


class _Worker(QThread):
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._stop = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def cancelled(self) -> bool:
        return self._stop.is_set()


class ModelLoadWorker(_Worker):
    progress = Signal(str, float)
    loaded = Signal(object)  # Engine

    def __init__(self, choice: ModelChoice, device: str, quantization: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.choice, self.device, self.quantization = choice, device, quantization

    def run(self) -> None:
        try:
            engine = open_engine(self.choice, self.device, self.quantization,
                                 progress=lambda m, f: self.progress.emit(m, float(f)), cancel=self.cancelled)
            engine = with_hearing(engine, self.choice.folder)  # audio encoder + projector: spoken queries as audio
        except Exception as exc:  # noqa: BLE001 - an honest FAILED state, not a traceback
            log.exception("model load failed")
            self.failed.emit(_message(exc))
            return
        self.loaded.emit(engine)


class AskWorker(_Worker):
    update = Signal(object)  # AssistantUpdate
    done = Signal(object)  # AnswerResult

    def __init__(self, assistant: Assistant, context: AskContext, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.assistant, self.context = assistant, context

    def run(self) -> None:
        c = self.context
        try:
            answer = self.assistant.ask(c.volume, c.frame, c.window, c.question, invert=c.invert,
                                        study_description=c.study_description, cancel=self.cancelled,
                                        on_update=self.update.emit)
        except Exception as exc:  # noqa: BLE001 - an honest FAILED state, not a traceback
            log.exception("question failed")
            self.failed.emit(_message(exc))
            return
        self.done.emit(AnswerResult(answer, c))


class ReliabilityWorker(_Worker):
    progress = Signal(str, float)
    done = Signal(object)  # ReliabilityResult

    def __init__(self, engine: Engine, result: AnswerResult, n_samples: int, max_questions: int,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine, self.result, self.answer = engine, result, result.answer
        self.n_samples, self.max_questions = n_samples, max_questions

    def run(self) -> None:
        try:
            result = check_answer(self.engine, self.answer, self.n_samples, self.max_questions,
                                  cancel=self.cancelled, progress=lambda m, f: self.progress.emit(m, float(f)))
        except Exception as exc:  # noqa: BLE001 - an honest FAILED state, not a traceback
            log.exception("reliability pass failed")
            result = not_assessed(State.FAILED, f"The reliability check failed: {_message(exc)}")
        if self.cancelled() and result.state is not State.CANCELLED:
            result = not_assessed(State.CANCELLED, "The reliability check was cancelled; the draft is unverified.")
        self.done.emit(ReliabilityResult(self.answer, self.result.context, result, tiers_by_phrase(result)))


class AssistantController(QObject):
    model_changed = Signal(str, str)
    model_progress = Signal(str, float)
    asking = Signal(object)
    update = Signal(object)
    answer_ready = Signal(object)
    answer_failed = Signal(str)
    reliability_started = Signal(object)
    reliability_progress = Signal(str, float)
    reliability_ready = Signal(object)
    busy_changed = Signal(bool)

    def __init__(self, choice: ModelChoice, settings: Settings | None = None, parent: QObject | None = None,
                 engine: Engine | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or Settings()
        self.choice = choice
        self.engine: Engine | None = None
        self.assistant: Assistant | None = None
        self.state = "none"
        self.indicator = choice.reason if not choice.available else choice.label()
        self.last_answer: AnswerResult | None = None
        self.last_reliability: ReliabilityResult | None = None
        self._context: AskContext | None = None  # the question asked last
        self._loader: ModelLoadWorker | None = None
        self._reload = False
        self._ask: AskWorker | None = None
        self._check: ReliabilityWorker | None = None
        self._workers = WorkerSet()
        if engine is not None:
            self.set_engine(engine)

    # ------------------------------------------------------------------ model
    def load_model(self, choice: ModelChoice | None = None) -> None:
        """Start loading ``choice`` (default: the current one) in the background."""
        if choice is not None:
            self.choice = choice
        if self._loader is not None and self._loader.isRunning():
            self._reload = True  # load the new choice once the running load has stopped
            self._loader.cancel()
            self._set_state("loading", f"Loading {self.choice.label()}…")
            return
        self._reload = False
        self.engine, self.assistant = None, None
        if not self.choice.available:
            self._set_state("none", self.choice.reason)
            return
        self._set_state("loading", f"Loading {self.choice.label()}…")
        w = ModelLoadWorker(self.choice, device_for(self.settings), quantization_for(self.settings), self)
        w.progress.connect(self.model_progress)
        w.loaded.connect(self._loaded)
        w.failed.connect(self._load_failed)
        self._loader = w
        self._start(w)

    def _loaded(self, engine: Engine) -> None:
        if not self._reload:  # else a newer choice replaces it when the worker has finished
            self.set_engine(engine)

    def _load_failed(self, message: str) -> None:
        if self._reload:
            return
        if self._loader is not None and self._loader.cancelled():
            message = f"Loading {self.choice.label()} was cancelled — open Settings to load a model."
        self._set_state("failed", message)

    def set_engine(self, engine: Engine) -> None:
        self.engine = engine
        self.assistant = Assistant(engine)
        self._set_state("ready", engine_label(engine, self.choice))

    def _set_state(self, state: str, text: str) -> None:
        self.state, self.indicator = state, text
        self.model_changed.emit(state, text)
        self.busy_changed.emit(self.busy)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.assistant is not None

    # ------------------------------------------------------------------ asking
    @property
    def busy(self) -> bool:
        return (self._ask is not None and self._ask.isRunning()) or self.state == "loading"

    @property
    def checking(self) -> bool:
        return self._check is not None and self._check.isRunning()

    def ask(self, context: AskContext) -> bool:
        """Ask in the background; False (with ``answer_failed``) when that cannot be done now."""
        if not self.ready:
            msg = self.choice.reason if not self.choice.available else f"The model is not ready ({self.indicator})."
            self.answer_failed.emit(str(NoModelError(msg)))
            return False
        if self._ask is not None and self._ask.isRunning():
            return False
        self.cancel_reliability()
        assert self.assistant is not None
        w = AskWorker(self.assistant, context, self)
        w.update.connect(self.update)
        w.done.connect(self._answered)
        w.failed.connect(self._ask_failed)
        self._ask = w
        self._context = context
        self.asking.emit(context)
        self._start(w)
        self.busy_changed.emit(True)
        return True

    def cancel(self) -> None:
        """Stop the model loading, the answer being written and the reliability check."""
        if self._loader is not None:
            self._loader.cancel()
        if self._ask is not None:
            self._ask.cancel()
        self.cancel_reliability()

    def cancel_reliability(self) -> None:
        if self._check is not None:
            self._check.cancel()

    def _answered(self, result: AnswerResult) -> None:
        self.last_answer = result
        self.answer_ready.emit(result)
        self.busy_changed.emit(self.busy)
        self._check_reliability(result)

    def _ask_failed(self, message: str) -> None:
        self.answer_failed.emit(message)
        self.busy_changed.emit(self.busy)

    def _check_reliability(self, result: AnswerResult) -> None:
        if self.engine is None:
            return
        self.reliability_started.emit(result)
        if result.answer.finish_reason == "cancelled":
            rel = check_answer(self.engine, result.answer, 1, 1)  # says "not assessed", touches no model
            self._checked(ReliabilityResult(result.answer, result.context, rel, {}))
            return
        w = ReliabilityWorker(self.engine, result, self.settings.reliability_samples,
                              self.settings.reliability_questions, self)
        w.progress.connect(self.reliability_progress)
        w.done.connect(self._checked)
        self._check = w
        self._start(w)

    def _checked(self, result: ReliabilityResult) -> None:
        if result.context is not self._context:
            return  # the stopped check of an earlier question: a newer one was asked (its result may come late)
        self.last_reliability = result
        self.reliability_ready.emit(result)

    # ------------------------------------------------------------------ threads
    def _start(self, w: _Worker) -> None:
        self._workers.start(w, self._retire)

    def _retire(self) -> None:
        w = self.sender()
        for name in ("_loader", "_ask", "_check"):
            if getattr(self, name) is w:
                setattr(self, name, None)
        self._workers.retire(w)
        if isinstance(w, ModelLoadWorker) and self._reload:
            self.load_model()
        self.busy_changed.emit(self.busy)

    def is_idle(self) -> bool:
        return self._workers.is_idle()

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Cancel and wait for every worker (on close and in tests)."""
        self._workers.shutdown(timeout_ms)
