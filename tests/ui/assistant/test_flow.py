"""The assistant end to end: the real tiny random InternVL loaded off the UI thread, its
(babbling) answers streamed, cancelled and checked; the model choice; and the main window
with the sample study, saved as test-output/assistant.png for a person to look at."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from app.assistant.session import ModelChoice, choose_model
from app.core.settings import Settings
from app.models.registry import ModelRegistry
from app.synthetic.sample import load_ground_truth
from inference.reliability.scoring import State, Tier
from tests.ui.assistant.test_panel import ScriptedEngine, make_host
from ui.assistant.controller import AssistantController
from ui.shell.assistant_setup import install_assistant
from ui.shell.app_setup import SAMPLE
from ui.shell.main_window import MainWindow
from ui.shell.screenshot import wait_until_idle
from ui.testing import synthetic_volume
from ui.viewer.overlays import SOURCE_COLORS


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from training.model_factory import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-internvl") / "model")


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from inference.engine.local import LocalEngine

    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


# ------------------------------------------------------------------ choosing the model

def test_model_choice_order(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    reg = ModelRegistry(tmp_path / "registry.json")
    s = Settings()
    assert choose_model(None, s, reg, demo_dir=demo).kind == "none"  # a demo folder without config.json
    (demo / "config.json").write_text("{}")
    assert choose_model(None, s, reg, demo_dir=demo).source == "embedded demo model"
    reg.models["mine"] = _info("mine", tmp_path / "mine")
    reg.default = "mine"
    assert choose_model(None, s, reg, demo_dir=demo).folder == tmp_path / "mine"
    s.model_dir = str(tmp_path / "settings-model")
    assert choose_model(None, s, reg, demo_dir=demo).source == "Settings"
    s.remote_url = "http://gpu:8000/v1"
    assert choose_model(None, s, reg, demo_dir=demo).kind == "remote"
    assert choose_model(tmp_path / "cli", s, reg, demo_dir=demo).folder == tmp_path / "cli"


def _info(name, path):
    from app.models.registry import ModelInfo

    return ModelInfo(name, str(path), "native", "InternVLForConditionalGeneration", "internvl", 1, "0" * 64)


def test_step_text_is_cut_into_plain_text_and_phrase_links():
    from app.assistant.session import step_segments
    from inference.parsing import parse_answer

    parsed = parse_answer("Step 2: Region localization\nSee <ref>a nodule</ref><box>[[1,2,30,40]]</box> and "
                          "<ref>a cyst</ref><box>[[50,50,90,90]]</box>.")
    step = parsed.steps[0]
    segments = step_segments(step, parsed.groundings)
    assert "".join(s.text for s in segments) == step.text  # nothing lost, nothing added
    assert [(s.text, s.grounding) for s in segments if s.grounding is not None] == [("a nodule", 0), ("a cyst", 1)]


def test_frame_ref_names_the_instance_and_frame_of_a_slice():
    from app.assistant.session import frame_ref
    from app.dicom.model import Instance, Series, Volume

    insts = [Instance(Path(f"/x/{i}.dcm"), f"1.2.{i}", "1.2.840.10008.5.1.4.1.1.2", 8, 8, number_of_frames=n)
             for i, n in ((1, 1), (2, 3))]
    series = Series(uid="9.9", number=1, description="", modality="CT", instances=insts)
    volume = Volume(series, np.zeros((4, 8, 8), np.int16), np.ones(4), np.zeros(4), None, None, loaded=4)
    assert [(r.sop_instance_uid, r.frame_number) for r in (frame_ref(volume, k) for k in range(4))] == [
        ("1.2.1", 1), ("1.2.2", 1), ("1.2.2", 2), ("1.2.2", 3)]


def test_a_cancelled_answer_is_not_checked():
    from app.assistant.ask import Assistant
    from app.assistant.session import check_answer

    engine = ScriptedEngine()
    volume = synthetic_volume(n=2, rows=64, cols=64)
    answer = Assistant(engine).ask(volume, 1, None, "", cancel=lambda: engine.pieces >= 3)
    assert answer.finish_reason == "cancelled"
    rel = check_answer(engine, answer, 5, 3)
    assert rel.state is State.CANCELLED and rel.tier is Tier.NONE and engine.sampled == []


def test_a_model_folders_own_calibration_sets_its_tiers(tmp_path):
    """Thresholds are calibrated per model: a model folder's reliability_calibration.json wins over the
    shipped uncalibrated defaults, which every other model keeps."""
    import json

    from app.assistant.ask import Assistant
    from app.assistant.session import check_answer

    engine = ScriptedEngine(samples="split")
    answer = Assistant(engine).ask(synthetic_volume(n=2, rows=64, cols=64), 1, None, "")
    assert check_answer(engine, answer, 5, 3).tier is Tier.RED  # shipped: green >= 0.7, amber >= 0.4
    (tmp_path / "reliability_calibration.json").write_text(json.dumps(
        {"version": 1, "thresholds": {"green": 0.9, "amber": 0.05}, "calibrated": True}))
    engine.folder = tmp_path
    assert check_answer(engine, answer, 5, 3).tier is Tier.AMBER
    engine.folder = tmp_path / "another-model"
    assert check_answer(engine, answer, 5, 3).tier is Tier.RED


# ------------------------------------------------------------------ the tiny model

def test_model_loads_in_the_background_and_the_indicator_names_it(qtbot, tiny_model_dir):
    states = []
    h = make_host(qtbot, choice=ModelChoice("local", tiny_model_dir, source="embedded demo model"),
                  settings=Settings(use_gpu=False))
    h.controller.model_changed.connect(lambda state, text: states.append((state, text)))
    progress = []
    h.controller.model_progress.connect(lambda m, f: progress.append(f))
    try:
        h.controller.load_model()
        assert h.controller.state == "loading" and not h.panel.ask_button.isEnabled()
        assert h.panel.load_bar.isVisibleTo(h.panel)
        qtbot.waitUntil(lambda: h.controller.state != "loading", timeout=60_000)
        assert states[0][0] == "loading" and states[-1] == ("ready", "demo model · CPU")
        assert h.panel.indicator.text() == "demo model · CPU" and h.panel.ask_button.isEnabled()
        assert progress and progress[-1] == 1.0 and not h.panel.load_bar.isVisibleTo(h.panel)
    finally:
        h.controller.shutdown()


def test_a_new_choice_while_loading_replaces_the_one_being_loaded(qtbot, tiny_model_dir, tmp_path):
    h = make_host(qtbot, choice=ModelChoice("local", tmp_path / "nothing-here", source="--model"),
                  settings=Settings(use_gpu=False))
    try:
        h.controller.load_model()
        h.controller.load_model(ModelChoice("local", tiny_model_dir, source="embedded demo model"))
        qtbot.waitUntil(lambda: h.controller.state in ("ready", "failed") and h.controller.is_idle(), timeout=60_000)
        assert (h.controller.state, h.panel.indicator.text()) == ("ready", "demo model · CPU")
    finally:
        h.controller.shutdown()


def test_a_folder_that_is_not_a_model_says_why_and_ask_stays_off(qtbot, tmp_path):
    h = make_host(qtbot, choice=ModelChoice("local", tmp_path, source="--model"))
    try:
        h.controller.load_model()
        qtbot.waitUntil(lambda: h.controller.state == "failed", timeout=60_000)
        assert "config.json is missing" in h.panel.indicator.text()
        assert not h.panel.ask_button.isEnabled()
    finally:
        h.controller.shutdown()


@pytest.fixture
def tiny_host(qtbot, tiny_engine):
    h = make_host(qtbot, tiny_engine, choice=ModelChoice("local", Path("tiny"), source="--model"))
    h.controller.assistant.max_new_tokens = 48
    yield h
    h.controller.shutdown()


def test_tiny_model_streams_an_answer_about_the_asked_slice_and_says_who_wrote_it(qtbot, tiny_host):
    updates = []
    tiny_host.controller.update.connect(updates.append)
    tiny_host.vp.set_slice(5)
    assert tiny_host.panel.indicator.text() == "tiny InternVL (random) · CPU"
    with qtbot.waitSignal(tiny_host.controller.answer_ready, timeout=60_000) as answered:
        tiny_host.panel.ask("Describe the findings")
    answer = answered.args[0].answer
    assert len(updates) >= 2 and answer.raw_text  # arrived in pieces
    assert answer.frame == 5 and all(f.frame == 5 for f in answer.findings)
    assert set(tiny_host.vp.overlays.ids()) == set(tiny_host.vp.overlays.ids(frame=5))
    assert answer.model_id == "tiny InternVL (random)"
    assert "tiny InternVL (random) · CPU" in tiny_host.panel.provenance.text()


class _Throttled:
    """The real tiny model, its pieces handed on no faster than a slow GPU would, so that
    Cancel is pressed while it is still writing (the tiny model alone may finish first)."""

    def __init__(self, engine, delay: float = 0.05) -> None:
        self.engine, self.delay = engine, delay

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stream(self, request, cancel=None):
        import time

        for piece in self.engine.stream(request, cancel=cancel):
            time.sleep(self.delay)
            yield piece


def test_cancel_stops_the_tiny_model(qtbot, tiny_engine):
    h = make_host(qtbot, _Throttled(tiny_engine), choice=ModelChoice("local", Path("tiny"), source="--model"))
    h.controller.assistant.max_new_tokens = 400
    updates = []
    h.controller.update.connect(updates.append)
    try:
        with qtbot.waitSignal(h.controller.answer_ready, timeout=60_000) as answered:
            h.panel.ask("Describe the findings")
            qtbot.waitUntil(lambda: len(updates) >= 2, timeout=30_000)
            h.panel.cancel_button.click()
        answer = answered.args[0].answer
        assert answer.finish_reason == "cancelled" and answer.timing.pieces < 400
        assert "Cancelled" in h.panel.status.text()
    finally:
        h.controller.shutdown()


class _DraftThenTiny(ScriptedEngine):
    """The draft is scripted (so there is a boxed finding to check); every check question
    (decomposition and the N samples) is answered by the real tiny model."""

    def __init__(self, tiny) -> None:
        super().__init__()
        self.tiny = tiny

    @property
    def model_id(self) -> str:
        return self.tiny.model_id

    def generate(self, request, cancel=None):
        return self.tiny.generate(request, cancel=cancel)

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        self.sampled += [r.prompt for r in requests]
        return self.tiny.sample(requests, n, temperature, top_p, cancel=cancel)


def test_reliability_of_a_babbling_model_ends_red_or_amber_never_green(qtbot, tiny_engine):
    engine = _DraftThenTiny(tiny_engine)
    h = make_host(qtbot, engine, settings=Settings(reliability_samples=4, reliability_questions=2))
    running = []
    h.controller.reliability_started.connect(lambda _r: running.append(h.panel.reliability.light.lit()))
    try:
        with qtbot.waitSignal(h.controller.reliability_ready, timeout=120_000) as checked:
            h.panel.ask("Describe the findings")
        rel = checked.args[0].reliability
        assert running == [[]]  # dark while it computed
        assert engine.sampled, "the real model must have been asked the check questions"
        assert rel.state in (State.DONE, State.REFUSED) and rel.questions
        assert rel.tier in (Tier.RED, Tier.AMBER)
        assert h.panel.reliability.light.lit() in ([Tier.RED], [Tier.AMBER])
    finally:
        h.controller.shutdown()


# ------------------------------------------------------------------ the main window

def _sample_answer(gt: dict, k: int) -> str:
    s = next(s for s in gt["slices"] if s["index"] == k)
    b = s["boxes"][0]
    w, hgt = gt["columns"], gt["rows"]
    box = [round(b["x0"] / w * 1000), round(b["y0"] / hgt * 1000), round(b["x1"] / w * 1000), round(b["y1"] / hgt * 1000)]
    return (
        "Step 1: Structure identification\nAxial contrast-enhanced CT of the lower chest: both lungs, the heart "
        "and the dome of the liver.\n"
        f"Step 2: Region localization\nThere is <ref>a spiculated mass</ref><box>[{box}]</box> in the right "
        "lower lobe.\n"
        "Step 3: Detailed description\nThe mass measures about 32 mm, has spiculated margins and soft-tissue "
        "density.\n"
        "Step 4: Holistic analysis\nA solitary spiculated lung mass is suspicious for a primary malignancy.\n"
        "Step 5: Report synthesis\nSpiculated right lower lobe mass, about 32 mm; tissue sampling or PET-CT "
        "is suggested.\n"
    )


def test_main_window_with_the_sample_study_screenshot(qtbot, output_dir, tmp_path):
    from PySide6.QtWidgets import QApplication

    from ui.shell.app_setup import STYLE

    gt = load_ground_truth(SAMPLE)
    k = 17  # the largest cut through the right lower lobe mass
    app = QApplication.instance()
    before = app.styleSheet()
    app.setStyleSheet(STYLE.read_text(encoding="utf-8"))  # the reading-room theme the viewer runs with
    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1600, 1000)
    engine = ScriptedEngine(answer=_sample_answer(gt, k), samples="mostly", model_id="XMedGPT-8B (scripted)")
    controller = install_assistant(win, settings=Settings(reliability_samples=8, reliability_questions=3),
                                   registry=ModelRegistry(tmp_path / "registry.json"), engine=engine)
    try:
        assert win.assistant is controller
        win.show()
        qtbot.waitExposed(win)
        win.open_paths([SAMPLE])
        qtbot.waitUntil(lambda: win.grid.active.volume is not None, timeout=30_000)
        assert wait_until_idle(win, 60)
        vp = win.grid.active
        vp.set_slice(k)
        vp.apply_preset(2)  # lung window
        panel = win.assistant_panel
        with qtbot.waitSignal(controller.reliability_ready, timeout=20_000) as checked:
            panel.ask("Describe the findings on this slice.")
        result = checked.args[0]
        assert result.context.frame_ref().sop_instance_uid == next(s for s in gt["slices"] if s["index"] == k)[
            "sop_instance_uid"]
        assert result.context.study_description.startswith("CT CHEST ABDOMEN")
        assert not panel.warning.isVisible()
        assert sorted(panel.step_views) == [1, 2, 3, 4, 5] and vp.overlays.ids(frame=k)
        assert panel.reliability.light.lit() in ([Tier.AMBER], [Tier.GREEN], [Tier.RED])
        qtbot.wait(100)
        path = output_dir / "assistant.png"
        assert win.grab().save(str(path))
        from tests.ui.shell.test_screenshot import has_colour, viewport_pixels

        assert has_colour(viewport_pixels(win, vp), SOURCE_COLORS["ai"]), "the AI box must be drawn"
    finally:
        win.shutdown()
        app.setStyleSheet(before)


def test_launcher_attaches_the_assistant(qtbot, tmp_path, monkeypatch):
    from app.synthetic.sample import write_ct_study
    from ui.shell.launcher import open_window

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    study = write_ct_study(tmp_path / "ct", n_slices=4, size=64, seed=3)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    win = open_window(argparse.Namespace(path=study, model=not_a_model))
    qtbot.addWidget(win)
    try:
        assert isinstance(win.assistant, AssistantController) and win.assistant.choice.source == "--model"
        qtbot.waitUntil(lambda: win.assistant.state == "failed", timeout=60_000)
        assert "config.json is missing" in win.assistant_panel.indicator.text()
    finally:
        win.shutdown()


def test_with_the_report_attached_each_box_is_drawn_once(qtbot, tmp_path, monkeypatch):
    from app.synthetic.sample import write_ct_study

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    study = write_ct_study(tmp_path / "ct", n_slices=6, size=128, seed=5)
    win = MainWindow()
    qtbot.addWidget(win)
    controller = install_assistant(win, settings=Settings(reliability_samples=3, reliability_questions=1),
                                   registry=ModelRegistry(tmp_path / "registry.json"), engine=ScriptedEngine())
    win.attach_report(Settings())
    try:
        win.show()
        win.open_paths([study])
        qtbot.waitUntil(lambda: win.grid.active.volume is not None, timeout=30_000)
        assert wait_until_idle(win, 60)
        vp = win.grid.active
        vp.set_slice(3)
        with qtbot.waitSignal(controller.reliability_ready, timeout=20_000):
            win.assistant_panel.ask("Describe the findings")
        qtbot.waitUntil(lambda: len(vp.overlays.ids()) == 2, timeout=3000)  # the report's two, ours handed over
        assert all(vp.overlays.frame_of(i) == 3 for i in vp.overlays.ids())
        assert not any(i.startswith("ai") for i in vp.overlays.ids())  # the panel's own copies are gone
        step = win.assistant_panel.step_views[2]
        vp.set_slice(0)
        step.body.linkActivated.emit(f"g:{step.links()[0][1]}")
        assert vp.overlays.highlighted in vp.overlays.ids() and vp.slice_index == 3
    finally:
        win.shutdown()


def test_asking_in_another_viewport_moves_the_answer_there(qtbot, tmp_path):
    from app.synthetic.sample import write_ct_study

    study = write_ct_study(tmp_path / "ct", n_slices=5, size=128, seed=6)
    win = MainWindow()
    qtbot.addWidget(win)
    controller = install_assistant(win, settings=Settings(reliability_samples=2, reliability_questions=1),
                                   registry=ModelRegistry(tmp_path / "registry.json"), engine=ScriptedEngine())
    try:
        win.show()
        win.open_paths([study])
        qtbot.waitUntil(lambda: win.grid.active.volume is not None, timeout=30_000)
        win.set_layout("1x2")
        assert wait_until_idle(win, 60)
        left, right = win.grid.visible()
        win.grid.set_active(left)
        with qtbot.waitSignal(controller.reliability_ready, timeout=20_000):
            win.assistant_panel.ask("Describe the findings")
        assert len(left.overlays.ids()) == 2 and right.overlays.ids() == []
        win.grid.set_active(right)
        right.set_slice(2)
        with qtbot.waitSignal(controller.reliability_ready, timeout=20_000) as checked:
            win.assistant_panel.ask("Describe the findings")
        assert checked.args[0].context.frame == 2
        assert left.overlays.ids() == [] and right.overlays.ids(frame=2) == right.overlays.ids()
        assert len(right.overlays.ids()) == 2
    finally:
        win.shutdown()
