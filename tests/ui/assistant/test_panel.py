"""The assistant panel with a scripted engine: known answers must give known boxes, links,
warnings and reliability states. The scripted engine is a deterministic test double of
:class:`inference.types.Engine` (the real tiny model is in test_assistant_flow.py)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QWidget

from app.assistant.session import NO_MODEL_TEXT, AskContext, ModelChoice
from app.core.settings import Settings
from inference.reliability.scoring import State, Thresholds, Tier
from inference.types import ChatRequest, Generation
from ui.assistant.controller import AssistantController
from ui.assistant.panel import TIER_TINT, AssistantPanel
from ui.testing import synthetic_volume
from ui.viewer.overlays import SOURCE_COLORS
from ui.viewer.viewport import Viewport

SIZE = 256  # synthetic volume: square, so 0–1000 maps to pixels by × SIZE / 1000

GROUNDED = """Step 1: Structure identification
Axial CT of a phantom; a dense block lies in the upper left.
Step 2: Region localization
There is <ref>a nodule</ref><box>[[250,250,500,500]]</box> and <ref>a second focus</ref><box>[[600,800,700,900]]</box>.
Step 3: Detailed description
The nodule is well defined and measures about 32 mm.
Step 4: Holistic analysis
A solid lesion with a smaller satellite focus.
Step 5: Report synthesis
Solid nodule with a satellite focus; compare with prior imaging.
"""


class ScriptedEngine:
    """Streams a fixed answer in pieces; answers check questions from a script.

    ``samples``: "agree" (every sampled answer is the draft's: "yes", "1" to "how many"), "mostly"
    (every fourth answer "no" / "2"), "split" (yes / no / maybe, 1 / 2 / 3: three meanings), "refuse"
    (every answer declines) or "crash" (sampling raises). Asked to locate a phrase again, it
    gives the box it drew for it (except "refuse" and "crash"). ``delay`` slows each piece (for Cancel).
    """

    def __init__(self, answer: str = GROUNDED, piece: int = 9, samples: str = "agree", delay: float = 0.0,
                 fail: bool = False, model_id: str = "scripted-xmedgpt", sample_wait: float = 0.0) -> None:
        self.answer, self.piece, self.samples, self.delay, self.fail = answer, piece, samples, delay, fail
        self.sample_wait = sample_wait  # seconds sample() takes unless cancelled
        self.sampling = threading.Event()
        self._id = model_id
        self.pieces = 0
        self.sampled: list[str] = []
        self.first_piece = threading.Event()

    @property
    def model_id(self) -> str:
        return self._id

    def describe(self) -> str:
        return f"{self._id} · scripted"

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        # the reliability pass asks to decompose a finding into attribute questions
        return Generation(text="presence | Is this lesion present in the image? | yes\n"
                               "count | How many such lesions are there? | 1")

    def _grounding(self, prompt: str) -> str:
        """Its own box for the phrase a locate prompt names ("" when it drew none)."""
        def key(text: str) -> str:
            return re.sub(r"^(?:the|a|an)\s+", "", " ".join(text.split()).lower())

        asked = re.search(r"<ref>(.*?)</ref>", prompt)
        for m in re.finditer(r"<ref>(.*?)</ref>(<box>.*?</box>)", self.answer):
            if asked and key(m.group(1)) == key(asked.group(1)):
                return m.group(0)
        return "It is absent from this image."

    def stream(self, request: ChatRequest, cancel=None) -> Iterator[str]:
        for i in range(0, len(self.answer), self.piece):
            if cancel is not None and cancel():
                return
            if self.fail and i > 40:
                raise RuntimeError("CUDA error: device-side assert triggered")
            self.pieces += 1
            self.first_piece.set()
            yield self.answer[i : i + self.piece]
            if self.delay:
                time.sleep(self.delay)

    def sample(self, requests: Sequence[ChatRequest], n: int, temperature: float = 1.0, top_p: float = 0.9,
               cancel=None) -> list[list[Generation]]:
        self.sampled += [r.prompt for r in requests]
        self.sampling.set()
        end = time.monotonic() + self.sample_wait
        while time.monotonic() < end:
            if cancel is not None and cancel():
                return [[Generation(text="", finish_reason="cancelled")] * n for _ in requests]
            time.sleep(0.01)
        if self.samples == "crash":
            raise RuntimeError("CUDA out of memory while sampling")
        if self.samples == "refuse":
            return [[Generation(text="I cannot determine this from the image.", token_logprobs=[-0.1])] * n
                    for _ in requests]
        if self.samples == "agree":
            words = ["yes"] * n
        elif self.samples == "mostly":
            words = ["no" if i % 4 == 3 else "yes" for i in range(n)]
        else:
            words = [("yes", "no", "maybe")[i % 3] for i in range(n)]
        out = []
        for r in requests:
            if "<ref>" in r.prompt:  # locate the phrase again
                out.append([Generation(text=self._grounding(r.prompt), token_logprobs=[-0.05])] * n)
            elif r.prompt.startswith("How many"):  # the draft says 1; the modes disagree as for yes/no
                counts = {"yes": "1", "no": "2", "maybe": "3"}
                out.append([Generation(text=counts[w], token_logprobs=[-0.05]) for w in words])
            else:
                out.append([Generation(text=w, token_logprobs=[-0.05]) for w in words])
        return out


class Host(QWidget):
    """A viewport and the assistant panel side by side (what the main window does)."""

    def __init__(self, controller: AssistantController, volume) -> None:
        super().__init__()
        self.vp = Viewport()
        self.vp.set_volume(volume)
        self.controller = controller
        self.panel = AssistantPanel(controller, self.target)
        layout = QHBoxLayout(self)
        layout.addWidget(self.vp, stretch=2)
        layout.addWidget(self.panel, stretch=1)

    def target(self, question: str):
        v = self.vp
        return v, AskContext(v.volume, v.slice_index, v.window, question, v.inverted, "")


def make_host(qtbot, engine=None, volume=None, choice=None, settings=None) -> Host:
    choice = choice or ModelChoice("local", Path("scripted"), source="test")
    settings = settings or Settings(reliability_samples=6, reliability_questions=3)
    controller = AssistantController(choice, settings, engine=engine)
    host = Host(controller, volume if volume is not None else synthetic_volume(n=12, rows=SIZE, cols=SIZE))
    qtbot.addWidget(host)
    host.resize(1200, 800)
    host.show()
    qtbot.waitExposed(host)
    return host


@pytest.fixture(autouse=True)
def reference_thresholds(monkeypatch):
    """The panel's behaviour under fixed tiers (green >= 0.7, amber >= 0.4), not the shipped calibration,
    which belongs to a model and changes whenever it is recalibrated."""
    import app.assistant.session as session

    monkeypatch.setattr(session, "thresholds_for", lambda _folder: Thresholds(green=0.7, amber=0.4))


@pytest.fixture
def host(qtbot):
    h = make_host(qtbot, ScriptedEngine())
    yield h
    h.controller.shutdown()


def ask_and_wait(qtbot, host: Host, question: str = "", reliability: bool = True):
    host.panel.query.setText(question)
    with qtbot.waitSignal(host.controller.answer_ready, timeout=10_000) as answered:
        qtbot.keyClick(host.panel.query, Qt.Key.Key_Return)  # Enter asks
    if reliability:
        qtbot.waitUntil(lambda: host.controller.last_reliability is not None
                        and host.controller.last_reliability.answer is answered.args[0].answer, timeout=10_000)
    return answered.args[0]


def test_no_model_configured_disables_ask_and_says_what_to_do(qtbot, output_dir):
    h = make_host(qtbot, choice=ModelChoice("none", reason=NO_MODEL_TEXT))
    h.controller.load_model()
    assert h.panel.indicator.text() == NO_MODEL_TEXT
    assert not h.panel.ask_button.isEnabled() and not any(b.isEnabled() for b in h.panel.presets)
    h.panel.query.setText("Describe the findings")
    qtbot.keyClick(h.panel.query, Qt.Key.Key_Return)
    assert "No model configured" in h.panel.status.text()
    assert h.vp.overlays.ids() == [] and h.controller.is_idle()
    qtbot.wait(50)  # let the layout settle, as the event loop would before a repaint
    assert h.panel.grab().save(str(output_dir / "assistant_no_model.png"))


def test_grounded_answer_draws_its_boxes_on_the_asked_slice(qtbot, host):
    host.vp.set_slice(7)
    result = ask_and_wait(qtbot, host, "Describe the findings on this slice.")
    assert result.context.frame == 7 and result.answer.frame == 7
    ids = host.vp.overlays.ids()
    assert len(ids) == 2 and host.vp.overlays.ids(frame=7) == ids  # nothing on other slices
    scale = SIZE / 1000
    # one label format with the report's boxes: "AI <n> · <what>[ · <tier>]" (the tier once it is known)
    expected = {"AI 1 · a nodule": (250, 250, 500, 500), "AI 2 · a second focus": (600, 800, 700, 900)}
    for box_id in ids:
        box = host.vp.overlays.box(box_id)
        label = host.vp.overlays.label_of(box_id)
        assert label.count(" · ") == 2 and label.split(" · ")[2] in ("green", "amber", "red"), label
        want = [v * scale for v in expected[" · ".join(label.split(" · ")[:2])]]
        assert [box.x0, box.y0, box.x1, box.y1] == pytest.approx(want, abs=0.6)
        assert host.vp.overlays.color_of(box_id) == SOURCE_COLORS["ai"]  # drawn as an "ai" proposal
    assert sorted(host.panel.step_views) == [1, 2, 3, 4, 5]
    assert host.panel.step_views[2].header.text() == "2 · Region localization"
    assert [t for t, _ in host.panel.step_views[2].links()] == ["a nodule", "a second focus"]
    assert "scripted-xmedgpt · scripted" in host.panel.provenance.text()
    host.vp.set_slice(3)
    assert host.vp.overlays.visible_ids() == []


def test_steps_appear_one_by_one_while_streaming(qtbot, host):
    seen: list[int] = []
    host.controller.update.connect(lambda _u: seen.append(len(host.panel.step_views)))
    ask_and_wait(qtbot, host, reliability=False)
    assert seen[0] < 5 and seen[-1] == 5
    assert seen == sorted(seen) and len(set(seen)) == 5  # 1, 2, 3, 4, 5 in turn


def test_steps_fold_away_and_back(qtbot, host):
    ask_and_wait(qtbot, host, reliability=False)
    view = host.panel.step_views[3]
    qtbot.waitUntil(view.body.isVisible, timeout=2000)
    view.header.click()
    assert view.body.isHidden() and view.header.arrowType() == Qt.ArrowType.RightArrow
    view.header.click()
    assert not view.body.isHidden() and view.header.arrowType() == Qt.ArrowType.DownArrow


def test_clicking_a_phrase_highlights_its_box_and_shows_its_slice(qtbot, host):
    host.vp.set_slice(7)
    ask_and_wait(qtbot, host)  # the labels gain their tier when the reliability pass ends: wait for it
    host.vp.set_slice(0)
    step = host.panel.step_views[2]
    (_, first), (_, second) = step.links()
    step.body.linkActivated.emit(f"g:{second}")
    focus = [i for i in host.vp.overlays.ids() if host.vp.overlays.label_of(i).startswith("AI 2 · a second focus")][0]
    assert host.vp.overlays.highlighted == focus and host.vp.slice_index == 7
    assert host.vp.overlays.visible_ids() == host.vp.overlays.ids()
    step.body.linkActivated.emit(f"g:{first}")
    assert host.vp.overlays.label_of(host.vp.overlays.highlighted).startswith("AI 1 · a nodule")


def test_an_edited_box_stays_where_the_reader_put_it(qtbot, host):
    ask_and_wait(qtbot, host, reliability=False)
    edits = []
    host.vp.overlays.box_edited.connect(lambda *a: edits.append(a))
    box_id = host.vp.overlays.ids()[0]
    roi = host.vp.overlays._entries[box_id].roi
    roi.setPos([10, 12])
    assert edits and edits[-1][0] == box_id and edits[-1][2].x0 == pytest.approx(10)


def test_guardrail_warning_for_right_kidney_on_a_chest_ct(qtbot, output_dir):
    volume = synthetic_volume(n=6, rows=SIZE, cols=SIZE)
    volume.series.body_part = "CHEST"
    volume.series.description = "Axial chest"
    answer = "<ref>the right kidney</ref><box>[[100,100,300,300]]</box>"
    h = make_host(qtbot, ScriptedEngine(answer=answer), volume=volume)
    try:
        ask_and_wait(qtbot, h, "Locate the right kidney")
        assert h.panel.warning.isVisible()
        assert "right kidney" in h.panel.warning.text() and "CHEST CT" in h.panel.warning.text()
        assert "⚠" in h.panel.findings_list.item(0).text()
        label = h.vp.overlays.label_of(h.vp.overlays.ids()[0])
        assert label.startswith("AI 1 · the right kidney") and label.endswith("⚠ not in this series?")
        # the scripted model repeats "yes" every time, yet a box for an absent structure is never green:
        # a guardrail mismatch is red (issue #13: a guardrail mismatch gives red, never green)
        assert h.panel.reliability.light.lit() == [Tier.RED]
        assert "CHEST CT" in h.panel.reliability.meaning.text()
        assert h.panel.findings_list.item(0).background().color() == TIER_TINT[Tier.RED]
        qtbot.wait(50)
        assert h.grab().save(str(output_dir / "assistant_guardrail.png"))
    finally:
        h.controller.shutdown()


def test_cancel_stops_the_answer_and_reliability_is_not_assessed(qtbot):
    engine = ScriptedEngine(piece=4, delay=0.03)
    h = make_host(qtbot, engine)
    try:
        with qtbot.waitSignal(h.controller.answer_ready, timeout=10_000) as answered:
            h.panel.ask("Describe the findings")
            qtbot.waitUntil(engine.first_piece.is_set, timeout=5000)
            qtbot.waitUntil(h.panel.cancel_button.isEnabled, timeout=2000)
            h.panel.cancel_button.click()
        answer = answered.args[0].answer
        assert answer.finish_reason == "cancelled"
        assert engine.pieces < len(GROUNDED) / 4 / 2
        assert "Cancelled" in h.panel.status.text()
        qtbot.waitUntil(lambda: h.controller.last_reliability is not None, timeout=5000)
        assert h.controller.last_reliability.reliability.state is State.CANCELLED
        assert h.panel.reliability.light.lit() == [] and "not assessed" in h.panel.reliability.meaning.text()
        assert engine.sampled == []  # no check questions were asked of a cancelled answer
        qtbot.waitUntil(h.panel.ask_button.isEnabled, timeout=3000)
    finally:
        h.controller.shutdown()


def test_reliability_dark_with_spinner_while_running_then_lights_and_tints(qtbot, host):
    lit_while_running = []
    host.controller.reliability_started.connect(
        lambda _r: lit_while_running.append((host.panel.reliability.light.lit(),
                                             host.panel.reliability.spinner.isVisibleTo(host.panel))))
    result = ask_and_wait(qtbot, host)
    assert lit_while_running == [([], True)]
    rel = host.controller.last_reliability
    assert rel.answer is result.answer and rel.reliability.state is State.DONE
    assert host.panel.reliability.light.lit() == [Tier.GREEN]
    assert rel.by_phrase["a nodule"][1] is Tier.GREEN
    item = host.panel.findings_list.item(0)
    score = rel.by_phrase["a nodule"][0]
    assert f"reliability {score:.2f} (green)" in item.text() and item.background().color() == TIER_TINT[Tier.GREEN]


def test_answers_that_split_three_ways_end_red(qtbot):
    h = make_host(qtbot, ScriptedEngine(samples="split"))
    try:
        ask_and_wait(qtbot, h)
        assert h.panel.reliability.light.lit() == [Tier.RED]
        for i in range(h.panel.findings_list.count()):
            assert h.panel.findings_list.item(i).background().color() == TIER_TINT[Tier.RED]
        assert "(red)" in h.panel.findings_list.item(0).text()
    finally:
        h.controller.shutdown()


def test_engine_failure_is_a_message_not_a_traceback(qtbot):
    h = make_host(qtbot, ScriptedEngine(fail=True))
    try:
        with qtbot.waitSignal(h.controller.answer_failed, timeout=10_000) as failed:
            h.panel.ask("Describe the findings")
        assert "The model stopped with an error" in failed.args[0]
        assert "CUDA error" in h.panel.status.text() and "Traceback" not in h.panel.status.text()
        qtbot.waitUntil(h.panel.ask_button.isEnabled, timeout=3000)
    finally:
        h.controller.shutdown()


def test_new_question_replaces_the_previous_boxes(qtbot, host):
    ask_and_wait(qtbot, host, reliability=False)
    first = set(host.vp.overlays.ids())
    qtbot.waitUntil(host.controller.is_idle, timeout=10_000)
    ask_and_wait(qtbot, host, reliability=False)
    second = set(host.vp.overlays.ids())
    assert len(second) == 2 and not first & second


def test_boxes_handed_over_to_a_twin_are_drawn_once_and_links_follow(qtbot, host):
    """When another part of the window (the report) draws the same boxes on answer_ready,
    the panel removes its own copies; its links and findings then show the other ones."""
    host.vp.set_slice(4)

    def report_like(result):
        for i, f in enumerate(result.answer.findings):
            host.vp.overlays.add_box(f.frame, f.box_px, f"{i + 1} finding", source="ai", box_id=f"report:{i}")

    host.controller.answer_ready.connect(report_like)
    ask_and_wait(qtbot, host, reliability=False)
    qtbot.waitUntil(lambda: sorted(host.vp.overlays.ids()) == ["report:0", "report:1"], timeout=3000)
    host.vp.set_slice(0)
    step = host.panel.step_views[2]
    step.body.linkActivated.emit(f"g:{step.links()[1][1]}")
    assert host.vp.overlays.highlighted == "report:1" and host.vp.slice_index == 4
    host.panel.findings_list.itemClicked.emit(host.panel.findings_list.item(0))
    assert host.vp.overlays.highlighted == "report:0"
    qtbot.waitUntil(host.controller.is_idle, timeout=10_000)
    host.controller.answer_ready.disconnect(report_like)
    after_clear = []
    host.controller.asking.connect(lambda _c: after_clear.append(sorted(host.vp.overlays.ids())))
    ask_and_wait(qtbot, host, reliability=False)  # a new answer leaves the other part's boxes alone
    assert after_clear == [["report:0", "report:1"]]
    qtbot.waitUntil(lambda: sorted(host.vp.overlays.ids()) == ["report:0", "report:1"], timeout=3000)


def test_asking_again_stops_the_running_check_and_its_result_does_not_show(qtbot):
    engine = ScriptedEngine(sample_wait=30.0)
    h = make_host(qtbot, engine)
    try:
        ask_and_wait(qtbot, h, reliability=False)
        qtbot.waitUntil(engine.sampling.is_set, timeout=5000)
        assert h.panel.reliability.spinner.isVisibleTo(h.panel) and h.panel.cancel_button.isEnabled()
        engine.sample_wait = 0.0
        qtbot.waitUntil(lambda: not h.controller.busy, timeout=5000)
        seen = []
        h.controller.reliability_ready.connect(
            lambda r: seen.append((r.reliability.state, r.context.question, h.panel.reliability.reliability.state)))
        t0 = time.monotonic()
        second = ask_and_wait(qtbot, h, "Locate the nodule")
        assert time.monotonic() - t0 < 10  # the first check stopped; it did not run its 30 s
        qtbot.waitUntil(h.controller.is_idle, timeout=10_000)  # the stopped check's thread has finished too
        # the first check's "cancelled" never arrives: not over the second question's pending check, nor after its
        # result (whichever thread finishes first), where it would have replaced the last reliability
        assert seen == [(State.DONE, "Locate the nodule", State.DONE)]
        assert h.controller.last_reliability.answer is second.answer
        assert h.panel.reliability.light.lit() == [Tier.GREEN]
    finally:
        h.controller.shutdown()


def test_a_direct_answer_without_steps_is_shown_with_its_links(qtbot):
    answer = "Yes: there is <ref>a small effusion</ref><box>[[100,600,400,900]]</box> at the right base."
    h = make_host(qtbot, ScriptedEngine(answer=answer))
    try:
        h.vp.set_slice(2)
        ask_and_wait(qtbot, h, "Is there a pleural effusion?", reliability=False)
        assert h.panel.step_views == {}
        assert not h.panel.answer_text.isHidden()
        text = h.panel.answer_text.text()
        assert "Yes: there is" in text and "at the right base." in text and 'href="g:0"' in text
        h.vp.set_slice(0)
        h.panel.answer_text.linkActivated.emit("g:0")
        assert h.vp.overlays.highlighted == h.vp.overlays.ids()[0] and h.vp.slice_index == 2
    finally:
        h.controller.shutdown()


def test_dictated_text_goes_into_the_query_and_asks(qtbot, host):
    host.panel.query.setText("Locate")
    host.panel.add_to_query("  the nodule ")
    assert host.panel.query.text() == "Locate the nodule"
    with qtbot.waitSignal(host.controller.answer_ready, timeout=10_000) as answered:
        host.panel.ask()  # what a voice "ask" command triggers
    assert answered.args[0].context.question == "Locate the nodule"


def test_boxes_never_land_on_a_series_shown_after_the_question(qtbot):
    engine = ScriptedEngine(piece=4, delay=0.01)
    h = make_host(qtbot, engine)
    messages = []
    h.panel.message.connect(messages.append)
    try:
        with qtbot.waitSignal(h.controller.answer_ready, timeout=10_000):
            h.panel.ask("Describe the findings")
            qtbot.waitUntil(engine.first_piece.is_set, timeout=5000)
            h.vp.set_volume(synthetic_volume(n=12, rows=SIZE, cols=SIZE))  # the reader opens another series
        assert h.vp.overlays.ids() == [] and h.panel.findings_list.count() == 2
        h.panel.findings_list.itemClicked.emit(h.panel.findings_list.item(0))
        assert h.vp.overlays.highlighted is None and "not shown" in messages[-1]
    finally:
        h.controller.shutdown()


@pytest.mark.parametrize("samples,state,words", [
    ("crash", State.FAILED, "check failed"),
    ("refuse", State.REFUSED, "declined"),
])
def test_a_failed_or_refused_check_says_so_and_is_never_green(qtbot, samples, state, words):
    h = make_host(qtbot, ScriptedEngine(samples=samples))
    try:
        ask_and_wait(qtbot, h)
        rel = h.controller.last_reliability.reliability
        assert rel.state is state
        assert h.panel.reliability.light.lit() != [Tier.GREEN] and not h.panel.reliability.spinner.isVisibleTo(h.panel)
        assert words in h.panel.reliability.meaning.text()
    finally:
        h.controller.shutdown()
