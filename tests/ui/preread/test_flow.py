"""The series pre-read in the viewer, through the real window offscreen: the bundled sample study, the
pre-read started from the panel on the assistant's engine (a deterministic engine that answers what the
study's ground truth shows, through the real sweep, linking, Assistant and reliability pass), its progress,
a cancelled run, the lesion list, a click that jumps to the key slice, the boxes on every slice a lesion
spans, and lesions accepted into the report; the voice command, the menu entry and the toolbar button."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor

from app.assistant.preread import PrereadOptions, choose_windows
from app.core.settings import Settings
from app.dictation.text import Dictation
from app.report.audit import read_records
from app.report.draft import FindingStatus, Origin
from app.synthetic.sample import load_ground_truth
from inference.reliability.scoring import Thresholds
from inference.types import Box, ChatRequest, Generation
from tests.app.assistant.test_preread import SPEC, TruthEngine, _image_key
from tests.app.report.test_session import SAMPLE
from tests.ui.report.test_flow import open_sample, settings_in
from ui.preread.panel import PREFIX, TIER_TEXT, TIER_TINT, PrereadPanel
from ui.report.controller import PREFIX as REPORT_PREFIX
from ui.shell.main_window import MainWindow
from ui.shell.preread_setup import install_preread
from ui.viewer.overlays import SOURCE_COLORS

OPTIONS = PrereadOptions(batch_size=4, n_samples=3, n_questions=1)
SPLIT_FROM = 25  # lesions from this slice on get split check answers: not green


class SampleEngine(TruthEngine):
    """The ground truth of the sample study as a model: the sweep (batched) gets the slice's true boxes, the
    five steps box the lesion, the reliability pass gets agreeing answers and the same box again — except for
    lesions from slice ``SPLIT_FROM`` on, whose check answers disagree. ``delay``: seconds per sweep batch
    (stops early when cancelled), so a run can be watched and cancelled."""

    image_spec = SPEC

    def __init__(self, volume, truth, delay: float = 0.0) -> None:
        super().__init__(volume, truth)
        self.delay = delay
        self.slice_of: dict[str, int] = {}
        for row in truth["slices"]:
            k = row["index"]
            from app.dicom.display import render
            from inference.imaging import prepare_model_image

            for window in choose_windows(volume.values(k))[0]:
                image = prepare_model_image(render(volume, k, window), SPEC, pixel_spacing=volume.geometry.spacing)
                self.slice_of[_image_key(image.rgb)] = k

    @property
    def model_id(self) -> str:
        return "sample-truth"

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        # the reliability pass asks to decompose a finding into attribute questions
        return Generation(text="presence | Is this lesion present in the image? | yes\n"
                               "count | How many such lesions are there? | 1")

    def generate_batch(self, requests: Sequence[ChatRequest], cancel=None) -> list[Generation]:
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            if cancel is not None and cancel():
                return [Generation(text="", finish_reason="cancelled") for _ in requests]
            time.sleep(0.01)
        return super().generate_batch(requests, cancel)

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        out = []
        for r in requests:
            key = _image_key(r.image)
            split = self.slice_of.get(key, 0) >= SPLIT_FROM
            words = [("yes", "no", "maybe")[i % 3] if split else "yes" for i in range(n)]
            if "<ref>" in r.prompt:  # locate the phrase again: the box the five steps drew
                m = re.search(r"<ref>[^<]*</ref><box>.*?</box>", self.reasoning.get(key, ""))
                out.append([Generation(text=m.group(0) if m else "It is absent.", token_logprobs=[-0.05])] * n)
            elif r.prompt.startswith("How many"):
                out.append([Generation(text={"yes": "1", "no": "2", "maybe": "3"}[w], token_logprobs=[-0.05])
                            for w in words])
            else:
                out.append([Generation(text=w, token_logprobs=[-0.05]) for w in words])
        return out


@pytest.fixture(autouse=True)
def reference_thresholds(monkeypatch):
    """Fixed tiers (green >= 0.7, amber >= 0.4), not a model's calibration."""
    from app.assistant import session

    monkeypatch.setattr(session, "thresholds_for", lambda _folder: Thresholds(green=0.7, amber=0.4))


def open_with_preread(qtbot, tmp_path, delay: float = 0.0,
                      options: PrereadOptions = OPTIONS) -> tuple[MainWindow, SampleEngine]:
    from app.dicom.loader import load_series
    from app.dicom.scan import scan

    volume = load_series(scan([SAMPLE]).all_series()[0])
    engine = SampleEngine(volume, load_ground_truth(SAMPLE), delay)
    win = open_sample(qtbot, settings_in(tmp_path), engine, tmp_path)  # the assistant on the engine, the report
    install_preread(win, options=options)  # the pre-read on the assistant's engine
    qtbot.wait(50)  # the dock tabs are laid out
    win.preread_panel.parentWidget().raise_()  # its tab, in front of the assistant's
    qtbot.waitUntil(lambda: not win.preread_panel.visibleRegion().isEmpty(), timeout=5000)
    return win, engine


@pytest.fixture
def win(qtbot, tmp_path):
    w, _ = open_with_preread(qtbot, tmp_path)
    yield w
    w.preread.shutdown()


def run_preread(qtbot, win: MainWindow) -> None:
    with qtbot.waitSignal(win.preread.finished, timeout=120_000):
        win.preread_panel.run_button.click()


def click_row(qtbot, panel: PrereadPanel, lesion_id: str) -> None:
    item = panel.item_of(lesion_id)
    assert item is not None, f"{lesion_id} is not listed"
    rect = panel.lesions.visualItemRect(item)
    qtbot.mouseClick(panel.lesions.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def contrast(a: QColor, b: QColor) -> float:
    def lum(c: QColor) -> float:
        def ch(v: float) -> float:
            v /= 255
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
        return 0.2126 * ch(c.red()) + 0.7152 * ch(c.green()) + 0.0722 * ch(c.blue())
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# ----------------------------------------------------------------------------------------------------------

def test_preread_lists_lesions_jumps_draws_boxes_and_accepts_into_the_report(qtbot, win, tmp_path, output_dir):
    panel, ctl, vp = win.preread_panel, win.preread, win.grid.active
    truth = load_ground_truth(SAMPLE)
    progress: list[tuple[int, int]] = []
    stages: list[str] = []
    ctl.progress.connect(lambda d, t: progress.append((d, t)))
    ctl.stage_changed.connect(stages.append)
    with qtbot.waitSignal(ctl.started, timeout=5000):
        panel.run_button.click()
    assert panel.progress.isVisible() and panel.cancel_button.isVisible() and not panel.run_button.isEnabled()
    assert not win.preread_actions["menu"].isEnabled() and win.preread_actions["cancel"].isEnabled()
    qtbot.waitUntil(lambda: not ctl.running and ctl.is_idle(), timeout=120_000)
    # the worker's last signals (the final progress, the result) are queued: wait for the result to land
    qtbot.waitUntil(lambda: ctl.result_for(vp.volume) is not None, timeout=10_000)

    # progress: the sweep from 0 to every reading, never backwards, then the reasoning lesion by lesion
    assert stages[:3] == ["sweep", "link", "reasoning"]
    sweep = [p for p in progress if p[1] > len(truth["lesions"])]
    assert sweep[0][0] == 0 and sweep[-1][0] == sweep[-1][1] >= 32
    assert [d for d, _ in sweep] == sorted(d for d, _ in sweep)
    assert progress[-1] == (len(truth["lesions"]), len(truth["lesions"]))
    assert not panel.progress.isVisible() and not panel.cancel_button.isVisible() and panel.run_button.isEnabled()

    # the list: one row per lesion of the study, with location, size, 1-based slices and a tier
    run = ctl.result_for(vp.volume)
    assert run is not None and panel.run is run
    assert panel.lesions.topLevelItemCount() == len(run.lesions) == len(truth["lesions"]) == 6
    status = panel.status.text()
    assert "6 lesions found" in status and "The AI can miss lesions: read every slice." in status
    mass = next(les for les in run.lesions if les.slices == (16, 18))  # L3, the 32 mm right lower lobe mass
    row = panel.item_of(mass.id)
    assert row.text(1) == "Right lung" and row.text(2) == f"{mass.diameter_mm:.0f}"
    # at the dock's default width the Location column shows the longest location whole, not "…"
    longest = max((panel.lesions.fontMetrics().horizontalAdvance(panel.item_of(les.id).text(1)) for les in run.lesions))
    assert panel.lesions.columnWidth(1) >= longest + 8, (panel.lesions.columnWidth(1), longest)
    assert abs(mass.diameter_mm - 32) < 3
    assert row.text(3) == "17–19" and mass.key_slice == 17
    assert "key image 18" in row.toolTip(3)
    assert row.text(4) == "● green" and row.background(4).color() == TIER_TINT["green"]
    liver = next(les for les in run.lesions if les.slices == (25, 27))  # split check answers: not green
    assert panel.item_of(liver.id).text(4) in ("● amber", "● red")

    # every lesion's boxes are on every slice it spans, violet "preread" boxes, only on their own slice
    for k in (16, 17, 18):
        assert f"{PREFIX}{mass.id}:{k}" in vp.overlays.ids(frame=k)
    assert all(vp.overlays.color_of(i) == SOURCE_COLORS["preread"] for i in vp.overlays.ids() if i.startswith(PREFIX))
    assert sum(len(les.detections) for les in run.lesions) == len([i for i in vp.overlays.ids() if i.startswith(PREFIX)])

    # a click on the lesion jumps to its key slice, in the lung window it was read in, its box thickened
    vp.set_slice(0)
    vp.set_window(vp.window.__class__(400, 40, "soft tissue"))
    click_row(qtbot, panel, mass.id)
    assert vp.slice_index == 17 and (vp.window.width, vp.window.center) == (1500, -600)
    assert vp.overlays.highlighted == f"{PREFIX}{mass.id}:17"
    assert f"{PREFIX}{mass.id}:17" in vp.overlays.visible_ids()
    assert mass.id in panel.detail.text() and "A round solid nodule" in panel.detail.text()
    qtbot.wait(50)
    win.grab().save(str(output_dir / "preread.png"))  # for a person to look at: the list, the box, the slice
    vp.set_slice(16)
    assert f"{PREFIX}{mass.id}:16" in vp.overlays.visible_ids() and f"{PREFIX}{mass.id}:17" not in vp.overlays.visible_ids()
    vp.set_slice(17)

    # nothing is in the report until the reader accepts: then one finding, the AI's proposal the reader took
    assert win.report.session.report is None or not win.report.session.report.findings
    assert panel.accept_button.isEnabled()
    panel.accept_button.click()
    report = win.report.session.report
    assert report is not None and len(report.findings) == 1
    f = report.findings[0]
    assert f.origin is Origin.AI and f.status is FindingStatus.ACCEPTED and f.included
    assert len(f.boxes) == 1 and f.boxes[0].slice_index == 17 and f.boxes[0].box == mass.key_box
    assert f.boxes[0].sop_instance_uid == truth["slices"][17]["sop_instance_uid"]
    assert "Right lung, images 17–19 (key image 18): nodule" in f.text and f"{mass.diameter_mm:.0f} mm" in f.text
    assert "A round solid nodule with smooth margins." in f.text and f.ai_text == f.text
    assert f.reliability is not None and f.reliability.tier.value == "green" and f.window.name == "lung"
    # the report draws its own (accepted, green) box; the pre-read's stays, labelled as accepted
    qtbot.waitUntil(lambda: f"{REPORT_PREFIX}{f.id}:0" in vp.overlays.ids(), timeout=5000)
    assert vp.overlays.color_of(f"{REPORT_PREFIX}{f.id}:0") == SOURCE_COLORS["accepted"]
    assert vp.overlays.label_of(f"{PREFIX}{mass.id}:17").endswith("accepted")
    assert panel.item_of(mass.id).text(0) == f"{mass.id} ✓" and not panel.accept_button.isEnabled()
    assert win.report.panel is not None and win.report.panel.report is report

    # accepting again adds nothing; "Accept all green" takes the green ones not yet taken
    assert panel.accept_selected() == f"Lesion {mass.id} is already in the report."
    green = [les for les in run.lesions if (les.reliability or {}).get("tier") == "green"]
    assert 1 < len(green) < len(run.lesions)
    panel.accept_green_button.click()
    assert len(report.findings) == len(green) and all(x.included for x in report.findings)
    assert not panel.accept_green_button.isEnabled()
    assert panel.accept_green() == "There is no green lesion left to accept."

    # the audit trail has the pre-read (request and output) and the reader's acceptance after the AI's proposal
    records = [r for _n, r, _err in read_records(tmp_path / "audit.jsonl") if r is not None]
    outputs = [r for r in records if r.action == "ai.output" and r.data.get("source") == "viewer pre-read"]
    assert len(outputs) == 1 and len(outputs[0].data["boxes"]) == 6
    events = [r.action for r in records if r.action.startswith("report.") and r.action != "report.open"]
    assert events[:2] == ["report.add", "report.accept"]


def test_the_accepted_mark_follows_the_report_rejected_undone_deleted(qtbot, win):
    """A lesion accepted into the report shows ✓; when the reader rejects its finding in the report (or Undo
    takes the finding out of the report again) the ✓ goes and the lesion can be accepted again."""
    panel, vp = win.preread_panel, win.grid.active
    run_preread(qtbot, win)
    run = win.preread.result_for(vp.volume)
    mass = next(les for les in run.lesions if les.slices == (16, 18))
    click_row(qtbot, panel, mass.id)
    panel.accept_button.click()
    report = win.report.session.report
    (f,) = report.findings
    assert panel.item_of(mass.id).text(0) == f"{mass.id} ✓" and not panel.accept_button.isEnabled()

    # rejected in the report (its Reject button): no ✓, the boxes no longer say "accepted", acceptable again
    win.report.panel.select_finding(f.id)
    assert win.report.panel.reject_button.isEnabled()
    win.report.panel.reject_button.click()
    assert report.finding(f.id).status is FindingStatus.REJECTED
    assert panel.item_of(mass.id).text(0) == mass.id
    assert panel.item_of(mass.id).toolTip(0) == "Not in the report"
    assert not vp.overlays.label_of(f"{PREFIX}{mass.id}:17").endswith("accepted")
    click_row(qtbot, panel, mass.id)
    assert panel.accept_button.isEnabled()
    # accepted again: the same finding is taken again (not a second one), the ✓ is back
    panel.accept_button.click()
    assert len(report.findings) == 1 and report.finding(f.id).status is FindingStatus.ACCEPTED
    assert panel.item_of(mass.id).text(0) == f"{mass.id} ✓"
    # Undo in the report (the acceptance) takes the ✓ away again; Redo brings it back
    report.undo()
    assert report.finding(f.id).status is FindingStatus.REJECTED and panel.item_of(mass.id).text(0) == mass.id
    report.redo()
    assert panel.item_of(mass.id).text(0) == f"{mass.id} ✓"

    # a lesion whose finding leaves the report altogether (Undo of its acceptance and of its addition)
    other = next(les for les in run.lesions if les.id != mass.id)
    click_row(qtbot, panel, other.id)
    panel.accept_button.click()
    assert panel.item_of(other.id).text(0) == f"{other.id} ✓" and len(report.findings) == 2
    report.undo()  # the reader's acceptance
    report.undo()  # the AI's proposal: the finding is gone from the report
    assert len(report.findings) == 1 and panel.item_of(other.id).text(0) == other.id
    click_row(qtbot, panel, other.id)
    assert panel.accept_button.isEnabled()
    panel.accept_button.click()
    assert len(report.findings) == 2 and panel.item_of(other.id).text(0) == f"{other.id} ✓"
    assert panel.item_of(mass.id).text(0) == f"{mass.id} ✓"  # the other lesion's mark was left alone


def test_a_cancelled_run_lists_nothing_and_the_next_one_runs(qtbot, tmp_path):
    win, engine = open_with_preread(qtbot, tmp_path, delay=0.3)
    panel, ctl = win.preread_panel, win.preread
    try:
        with qtbot.waitSignal(ctl.started, timeout=5000):
            panel.run_button.click()
        qtbot.waitUntil(lambda: ctl.done_total[0] >= OPTIONS.batch_size, timeout=30_000)
        assert panel.progress.isVisible() and panel.progress.value() >= OPTIONS.batch_size
        with qtbot.waitSignal(ctl.cancelled, timeout=30_000) as stopped:
            panel.cancel_button.click()
        assert "Pre-read cancelled after" in stopped.args[0] and "nothing was listed" in stopped.args[0]
        assert panel.status.text() == stopped.args[0]
        qtbot.waitUntil(ctl.is_idle, timeout=30_000)
        assert sum(engine.batches) < 32 and ctl.results == {} and panel.lesions.topLevelItemCount() == 0
        assert not panel.progress.isVisible() and panel.run_button.isEnabled() and not panel.cancel_button.isVisible()
        assert not [i for i in win.grid.active.overlays.ids() if i.startswith(PREFIX)]
        assert panel.cancel() == "No pre-read is running."
        # the next run is not disturbed by the cancelled one
        engine.delay = 0.0
        run_preread(qtbot, win)
        assert panel.lesions.topLevelItemCount() == 6
    finally:
        ctl.shutdown()


def test_a_preread_that_finds_nothing_says_it_is_not_a_negative_read(qtbot, tmp_path):
    """An empty list is the AI's, not an all-clear: the line says to read every slice (a list says so too)."""
    win, engine = open_with_preread(qtbot, tmp_path)
    panel, ctl = win.preread_panel, win.preread
    try:
        engine.answers.clear()  # the sweep is told "No lesion is seen." on every slice
        run_preread(qtbot, win)
        assert panel.lesions.topLevelItemCount() == 0
        text = panel.status.text()
        assert text.startswith("No lesion found in ") and "This is not a negative read." in text, text
        assert text.endswith("The AI can miss lesions: read every slice."), text
    finally:
        ctl.shutdown()


def test_voice_command_menu_and_toolbar_start_the_preread(qtbot, win):
    ctl = win.preread
    assert Dictation().handle("Pre-read.").command == "preread_series"
    assert {"preread_series", "cancel_preread", "accept_green_lesions"} <= set(win.actions.names())
    with qtbot.waitSignal(ctl.started, timeout=5000):
        assert win.actions.run("preread_series")  # what the dictation controller runs for "pre-read"
    out = win.actions.run("preread_series")
    assert not out and "already running" in out.message
    assert win.actions.run("cancel_preread")
    qtbot.waitUntil(ctl.is_idle, timeout=60_000)
    tools = next(a.menu() for a in win.menuBar().actions() if a.text().replace("&", "") == "Tools")
    assert win.preread_actions["menu"] in tools.actions()
    assert win.preread_actions["toolbar"] in win.toolbar.actions()
    assert win.toolbar.actions()[-1].text() == "Help"  # Help stays last
    assert win.toolbar.actions()[:3] == [win.toolbar.actions()[0], win.toolbar.actions()[1],
                                         win.preread_actions["toolbar"]]  # Open | Pre-read: in sight first
    with qtbot.waitSignal(ctl.finished, timeout=120_000):
        win.preread_actions["toolbar"].trigger()
    # the panel is a tab beside the assistant's
    assistant_dock = win.assistant_panel.parentWidget()
    assert win.preread_panel.parentWidget() in win.tabifiedDockWidgets(assistant_dock)


def test_asked_while_the_model_loads_the_preread_starts_when_it_is_ready(qtbot, tmp_path):
    """A radiologist who clicks "Pre-read series" right after opening the viewer (the model still loading)
    is not told to come back: the request waits, Cancel withdraws it, and a model that fails says so."""
    win, engine = open_with_preread(qtbot, tmp_path)
    panel, ctl, assistant = win.preread_panel, win.preread, win.assistant
    menu, cancel_action = win.preread_actions["menu"], win.preread_actions["cancel"]
    try:
        assistant._set_state("loading", "Loading XMedGPT demo…")  # as load_model() does
        panel.run_button.click()
        assert not ctl.running and panel.waiting
        assert panel.status.text().startswith("The model is still loading: the pre-read of #2 ")
        assert "starts when it is ready" in panel.status.text()
        assert not panel.run_button.isEnabled() and panel.cancel_button.isVisible()
        assert not menu.isEnabled() and cancel_action.isEnabled()
        with qtbot.waitSignal(ctl.finished, timeout=120_000):
            assistant.set_engine(engine)  # what the loader's `loaded` signal does
        assert not panel.waiting and panel.lesions.topLevelItemCount() == 6
        qtbot.waitUntil(menu.isEnabled, timeout=30_000)  # when the worker thread has ended
        assert panel.run_button.isEnabled() and menu.isEnabled() and not cancel_action.isEnabled()

        # withdrawn: loading ends and nothing starts
        assistant._set_state("loading", "Loading XMedGPT demo…")
        panel.run_button.click()
        assert panel.waiting
        panel.cancel_button.click()
        assert not panel.waiting and panel.status.text() == "The pre-read will not start: withdrawn."
        with qtbot.assertNotEmitted(ctl.started, wait=200):
            assistant.set_engine(engine)

        # the model fails to load: the reader is told, the request is dropped
        assistant._set_state("loading", "Loading XMedGPT demo…")
        panel.run_button.click()
        with qtbot.assertNotEmitted(ctl.started, wait=200):
            assistant._set_state("failed", "The model folder is damaged.")
        assert not panel.waiting and panel.run_button.isEnabled()
        assert panel.status.text() == ("The pre-read did not start: No model is ready for the pre-read: "
                                       "The model folder is damaged.")
    finally:
        ctl.shutdown()


def test_without_a_model_or_a_study_the_panel_says_why(qtbot, tmp_path):
    win = MainWindow()
    qtbot.addWidget(win)
    win.attach_report(settings_in(tmp_path))
    install_preread(win, settings=Settings())
    out = win.actions.run("preread_series")
    assert not out and "Open a study first" in out.message
    win.open_paths([SAMPLE])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None
                    and win.grid.active.volume.loaded == 32, timeout=30_000)
    qtbot.wait(50)  # the idle signal (the panel's refresh) is queued
    out = win.actions.run("preread_series")
    assert not out and "no assistant model" in out.message
    assert win.preread_panel.status.text() == out.message
    assert "not pre-read yet" in win.preread_panel.series_label.text()
    out = win.actions.run("accept_preread_lesion")
    assert not out and out.message.startswith("Select a lesion first")


def test_tier_colours_are_readable():
    for tier, tint in TIER_TINT.items():
        assert contrast(tint, TIER_TEXT[tier]) >= 4.5, tier


def test_a_lesions_detail_says_which_checks_failed_and_why_in_words(qtbot, win):
    from app.assistant.preread import Candidate, Detection

    det = Detection(slice=22, box=Box(10, 10, 40, 40), window="lung", phrase="mass", confidence=0.9,
                    center_mm=np.zeros(3), width_mm=30.0, height_mm=30.0)
    lesion = Candidate("P2", {22: det}, np.zeros(3), 66.5, 50.06, 0.9, 22, description="A 57 mm mass.",
                       location="right lung",
                       reliability={"tier": "red", "score": 0.0, "checks": [
                           {"name": "box_consistency", "passed": False,
                            "detail": "0 of 5 re-readings boxed the draft's place; 5 gave no box"},
                           {"name": "side", "passed": True, "detail": "the text says right"}]})
    text = win.preread_panel._detail(lesion)
    assert ("Reliability: red (0.00) — not passed: box re-read: 0 of 5 re-readings boxed the draft's place; "
            "5 gave no box.") in text
    assert "box_consistency" not in text and "side" not in text.split("\n")[1]


def test_n_and_shift_n_step_through_the_lesions_with_the_eyes_on_the_image(qtbot, win):
    """Keys as a reader presses them on the image: N goes to the next lesion of the list (its key slice
    and window), Shift+N back, round at the ends; before a pre-read N says why it does nothing."""
    panel, vp = win.preread_panel, win.grid.active
    vp.view.setFocus()
    qtbot.keyClick(vp.view, Qt.Key.Key_N)
    assert win.statusBar().currentMessage() == "No lesion list for the series on screen: pre-read it first."
    run_preread(qtbot, win)
    lesions = panel.run.lesions
    assert len(lesions) == 6
    vp.view.setFocus()
    seen = []
    for _ in range(len(lesions) + 1):
        qtbot.keyClick(vp.view, Qt.Key.Key_N)
        les = panel.current_lesion()
        assert vp.slice_index == les.key_slice  # jumped to its key slice
        seen.append(les.id)
    assert seen == [c.id for c in lesions] + [lesions[0].id]  # in list order, then round to the first
    qtbot.keyClick(vp.view, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert panel.current_lesion().id == lesions[-1].id and vp.slice_index == lesions[-1].key_slice
    assert win.grid.active is vp and win.focusWidget() is vp.view  # the image keeps the keys (Up/Down scroll)


def test_a_header_click_sorts_the_lesions_and_n_follows_the_list_as_shown(qtbot, win):
    """Largest first, or the most trustworthy first: a click on Size or Tier sorts by what the column means (sizes
    as numbers, tiers green < amber < red, P2 before P10); N then steps in the order shown."""
    panel, vp = win.preread_panel, win.grid.active
    run_preread(qtbot, win)
    lesions = panel.run.lesions

    def shown() -> list[str]:
        return [panel.lesions.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole)
                for i in range(panel.lesions.topLevelItemCount())]

    assert shown() == [c.id for c in lesions]  # the AI's order, P1 first
    header = panel.lesions.header()
    size_col = 2

    def click_header(col: int) -> None:
        x = header.sectionViewportPosition(col) + header.sectionSize(col) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))

    click_header(size_col)
    assert shown() == [c.id for c in sorted(lesions, key=lambda c: (c.diameter_mm, int(c.id[1:])))]
    click_header(size_col)  # again: largest first
    by_size = [c.id for c in sorted(lesions, key=lambda c: (-c.diameter_mm, -int(c.id[1:])))]
    assert shown() == by_size
    vp.view.setFocus()
    seen = []
    for _ in range(3):
        qtbot.keyClick(vp.view, Qt.Key.Key_N)
        seen.append(panel.current_lesion().id)
    assert seen == by_size[:3]
    rank = {"green": 0, "amber": 1, "red": 2}
    click_header(4)
    tiers = [rank.get(panel.run.lesion(i).reliability["tier"], 3) for i in shown()]
    assert tiers == sorted(tiers)


def test_a_whole_preread_from_the_keyboard_with_the_eyes_on_the_image(qtbot, win):
    """Ctrl+Shift+P pre-reads the series on screen, N goes to a lesion, Ctrl+Shift+A takes it into the report;
    Ctrl+Shift+A again says it is in already; the image keeps the keys throughout."""
    panel, vp = win.preread_panel, win.grid.active
    vp.view.setFocus()
    qtbot.keyClick(vp.view, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert win.report.session.report is None or not win.report.session.report.findings  # nothing to take yet
    with qtbot.waitSignal(win.preread.finished, timeout=120_000):
        qtbot.keyClick(vp.view, Qt.Key.Key_P,
                       Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    vp.view.setFocus()
    qtbot.keyClick(vp.view, Qt.Key.Key_N)
    lesion = panel.current_lesion()
    assert lesion is not None and vp.slice_index == lesion.key_slice
    qtbot.keyClick(vp.view, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    (finding,) = win.report.session.report.findings
    assert lesion.id in panel._taken() and finding.text.startswith(lesion.location[:1].upper())
    qtbot.keyClick(vp.view, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert len(win.report.session.report.findings) == 1
    assert win.statusBar().currentMessage() == f"Lesion {lesion.id} is already in the report."
    assert win.focusWidget() is vp.view


def test_next_lesion_by_voice(qtbot, win):
    """What the dictation controller runs for "next lesion" / "previous finding"."""
    run_preread(qtbot, win)
    first, last = win.preread_panel.run.lesions[0], win.preread_panel.run.lesions[-1]
    command = Dictation().handle("Next lesion.").command
    assert command == "next_preread_lesion" and win.actions.run(command)
    assert win.preread_panel.current_lesion().id == first.id and win.grid.active.slice_index == first.key_slice
    command = Dictation().handle("Previous finding").command
    assert command == "previous_preread_lesion" and win.actions.run(command)
    assert win.preread_panel.current_lesion().id == last.id


def test_asked_while_the_series_loads_the_preread_starts_when_the_window_is_idle(qtbot, win):
    """The other reason to wait: the series on screen is still loading. The window's idle signal (a load
    ended) starts the request."""
    from ui.preread.controller import Waiting

    panel, ctl, vol = win.preread_panel, win.preread, win.grid.active.volume
    vol.loaded = len(vol) - 5  # as during a progressive load
    why = ctl.start(vol)
    assert isinstance(why, Waiting) and why == "The series is still loading"
    panel.run_button.click()
    assert panel.waiting and "The series is still loading: the pre-read of #2 " in panel.status.text()
    win.idle.emit()  # still loading: it keeps waiting
    assert panel.waiting and not ctl.running
    vol.loaded = len(vol)
    with qtbot.waitSignal(ctl.finished, timeout=120_000):
        win.idle.emit()  # what the window sends when the load has ended
    assert not panel.waiting and panel.lesions.topLevelItemCount() == 6


def test_every_toolbar_command_is_in_sight_on_a_1366_px_wide_screen(qtbot, win):
    """At 1600 px the toolbar overflowed and hid Pre-read, Cine, Flip V, Reset and Help behind a » drawn
    dark on dark. Now the presets, slab and orientation commands are one button with a menu each: every
    button is shown on a laptop-wide window (1366 px); narrower, the » shows (light) what does not fit."""
    from PySide6.QtWidgets import QToolButton

    tb = win.toolbar
    win.resize(1366, 800)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: tb.width() <= 1366, timeout=5000)
    hidden = [a.text() or a.objectName() for a in tb.actions()
              if not a.isSeparator() and not tb.widgetForAction(a).isVisible()]
    assert hidden == []
    assert tb.widgetForAction(win.preread_actions["toolbar"]).geometry().right() < 300
    # the menus: the window's own actions (text, shortcut, checked state), triggered from the toolbar
    window = tb.findChild(QToolButton, "toolbar_window")
    names = [a.text().split("\t")[0] for a in window.menu().actions()]
    assert names[:2] == [win.actions_by_name["preset_1"].text().split("\t")[0],
                         win.actions_by_name["preset_2"].text().split("\t")[0]]
    vp = win.grid.active
    window.menu().actions()[1].trigger()
    assert "lung" in vp.window.name.lower()
    orient = tb.findChild(QToolButton, "toolbar_orient")
    before = vp.transform
    orient.defaultAction().trigger()  # a click on the button itself rotates
    assert vp.transform == before.rotated_cw()
    flip_v = next(a for a in orient.menu().actions() if a is win.actions_by_name["flip_v"])
    flip_v.trigger()
    assert vp.transform == before.rotated_cw().flipped_v()
    slab = tb.findChild(QToolButton, "toolbar_slab")
    assert [a for a in slab.menu().actions()] == [win.actions_by_name[n]
                                                  for n in ("slab_thicker", "slab_thinner", "slab_mode")]
    win.resize(700, 800)
    qtbot.waitUntil(lambda: tb.width() <= 700, timeout=5000)
    ext = tb.findChild(QToolButton, "qt_toolbar_ext_button")
    qtbot.waitUntil(ext.isVisible, timeout=5000)
    image = ext.icon().pixmap(16, 16).toImage()
    assert max(image.pixelColor(x, y).lightness() for x in range(16) for y in range(16)
               if image.pixelColor(x, y).alpha() > 0) > 150  # a light », not Qt's dark arrow


def test_the_status_line_follows_the_series_on_screen(qtbot, win, tmp_path):
    """Seen in a real window: after Ctrl+PgDown to the next study the panel still said "Accepted into the
    report: P1." -- about the study just left. The line speaks of the list on screen."""
    import shutil

    from pydicom.data import get_testdata_file

    from ui.preread.panel import IDLE_HINT

    panel = win.preread_panel
    run_preread(qtbot, win)
    click_row(qtbot, panel, "P1")
    panel.accept_button.click()
    assert panel.status.text() == "Accepted into the report: P1."
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), other)
    win.open_paths([other])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None
                    and len(win.grid.active.volume) == 1, timeout=30_000)
    qtbot.waitUntil(lambda: panel.status.text() == IDLE_HINT, timeout=5000)
    assert panel.lesions.topLevelItemCount() == 0
    win.open_paths([SAMPLE])  # back: its pre-read is listed again, and the line says so
    qtbot.waitUntil(lambda: panel.lesions.topLevelItemCount() > 0, timeout=30_000)
    n = panel.lesions.topLevelItemCount()
    assert re.fullmatch(rf"{n} lesions? in .+\. Click one to see it\. The AI can miss lesions: read every slice\.",
                        panel.status.text()), panel.status.text()


def test_weaker_candidates_under_the_operating_point_are_shown_only_when_the_reader_asks(qtbot, tmp_path, output_dir):
    """With an operating point the list holds the lesions the AI is surest of; the rest are one click away: "Show N
    weaker candidates" lists them marked "weaker" (not reasoned, not checked) with their boxes, unticking hides them
    again, and the reader can still take one into the report."""
    win, _ = open_with_preread(qtbot, tmp_path, options=PrereadOptions(batch_size=4, n_samples=3, n_questions=1,
                                                                      min_score=0.6))
    try:
        panel, vp = win.preread_panel, win.grid.active
        run_preread(qtbot, win)
        run = win.preread.result_for(vp.volume)
        listed, weaker = list(run.result.lesions), list(run.result.weaker)
        assert listed and weaker and len(listed) + len(weaker) == 6  # the sample's six lesions, three-slice ones first
        assert all(les.slices[0] < les.slices[1] for les in listed) and all(les.score < 0.6 for les in weaker)
        assert panel.lesions.topLevelItemCount() == len(listed)
        assert f"{len(weaker)} weaker candidates" in panel.status.text() and "not listed" in panel.status.text()
        assert panel.weaker_box.isVisible() and not panel.weaker_box.isChecked()
        assert panel.weaker_box.text() == f"Show {len(weaker)} weaker candidates (under the model's operating point)"
        assert not any(i.startswith(f"{PREFIX}{les.id}:") for les in weaker for i in vp.overlays.ids())
        # the audit trail has every box the AI can show, the weaker ones marked so
        records = [r for _n, r, _err in read_records(tmp_path / "audit.jsonl") if r is not None]
        (output,) = [r for r in records if r.action == "ai.output" and r.data.get("source") == "viewer pre-read"]
        marked = [b["lesion"] for b in output.data["boxes"] if b.get("below_operating_point")]
        assert marked == [les.id for les in weaker] and len(output.data["boxes"]) == 6

        qtbot.mouseClick(panel.weaker_box, Qt.MouseButton.LeftButton, pos=QPoint(8, panel.weaker_box.height() // 2))
        assert panel.weaker_box.isChecked() and panel.lesions.topLevelItemCount() == 6
        weak = weaker[0]
        row = panel.item_of(weak.id)
        assert row.text(4) == "○ weaker" and "not reasoned about or checked" in row.toolTip(4)
        k = next(iter(weak.detections))
        assert vp.overlays.label_of(f"{PREFIX}{weak.id}:{k}").endswith("· weaker")
        click_row(qtbot, panel, weak.id)
        assert vp.slice_index == weak.key_slice and "not assessed — under the model's operating point" in \
            panel.detail.text()
        qtbot.wait(50)
        win.grab().save(str(output_dir / "preread_weaker.png"))
        panel.accept_button.click()  # the reader's call: a weaker candidate can go into the report too
        report = win.report.session.report
        assert report is not None and len(report.findings) == 1 and report.findings[0].boxes[0].slice_index == k

        panel.weaker_box.setChecked(False)
        assert panel.lesions.topLevelItemCount() == len(listed)
        assert not any(i.startswith(f"{PREFIX}{les.id}:") for les in weaker for i in vp.overlays.ids())
    finally:
        win.preread.shutdown()


@pytest.mark.slow
def test_the_demo_model_pre_reads_the_bundled_sample_as_a_new_user_sees_it(qtbot, tmp_path, output_dir):
    """What `make run` shows a new user: the committed demo model pre-reads the bundled sample in the real window.
    Its candidates there score under its operating point, so the list is empty and says so, never as an all-clear;
    "Show weaker candidates" brings up the 24 mm liver lesion and the 32 mm right lower lobe mass among them, and a
    click shows the mass's box on its slice (test-output/preread_demo_model_sample.png)."""
    import math

    from app.assistant.preread import operating_point_for
    from inference.engine.local import LocalEngine
    from inference.resources import DEMO_MODEL_DIR

    engine = LocalEngine.from_folder(DEMO_MODEL_DIR, device="cpu", quantization="none")
    point = operating_point_for(DEMO_MODEL_DIR)
    assert point is not None
    win = open_sample(qtbot, settings_in(tmp_path), engine, tmp_path)
    install_preread(win, options=PrereadOptions(n_samples=3, n_questions=1))  # min_score: the model's own point
    try:
        qtbot.wait(50)
        panel, vp = win.preread_panel, win.grid.active
        panel.parentWidget().raise_()
        qtbot.waitUntil(lambda: not panel.visibleRegion().isEmpty(), timeout=5000)
        run_preread(qtbot, win)
        run = win.preread.result_for(vp.volume)
        assert run.result.operating_point.min_score == point.min_score
        truth = {les["id"]: les for les in load_ground_truth(SAMPLE)["lesions"]}

        def hits(c, lesion_id: str) -> bool:
            t = truth[lesion_id]
            return math.dist(c.center_mm, t["center_patient_mm"]) <= t["size_mm"] / 2 + 5

        listed, weaker = run.result.lesions, run.result.weaker
        status = panel.status.text()
        if not listed:  # as measured on 2026-12-08 (docs/demo-512-run-27.md): nothing over the point
            assert "No lesion found" in status and "This is not a negative read." in status
        assert f"{len(weaker)} weaker candidate" in status and panel.weaker_box.isVisible()
        panel.weaker_box.setChecked(True)
        shown = listed + weaker
        mass = next(c for c in shown if hits(c, "L3"))  # the 32 mm right lower lobe mass
        assert any(hits(c, "L5") for c in shown)  # the 24 mm liver lesion
        click_row(qtbot, panel, mass.id)
        assert vp.slice_index == mass.key_slice and 16 <= mass.key_slice <= 18
        assert f"{PREFIX}{mass.id}:{mass.key_slice}" in vp.overlays.visible_ids()
        qtbot.wait(50)
        win.grab().save(str(output_dir / "preread_demo_model_sample.png"))
    finally:
        win.preread.shutdown()
