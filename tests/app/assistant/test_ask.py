"""The assistant's round trip: what the engine is given, and what the reader gets back.

A scripted engine (a deterministic test double of the Engine protocol) plays the
model's part so the orchestration is checked exactly; one test runs the real tiny
InternVL end to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from app.assistant.ask import Assistant, AssistantError, AssistantUpdate
from app.dicom.display import render
from app.dicom.model import Geometry, Series, Volume, Window
from inference.imaging import ImageSpec, prepare_model_image
from inference.prompts import Task
from inference.types import ChatRequest, Engine, Generation

ROWS, COLS = 96, 160  # non-square on purpose


class ScriptedEngine:
    """Streams a fixed answer in fixed-size pieces and records what it was asked."""

    def __init__(self, answer: str, piece: int = 7, model_id: str = "scripted-xmedgpt", fail: bool = False) -> None:
        self.answer = answer
        self.piece = piece
        self._id = model_id
        self.fail = fail
        self.requests: list[ChatRequest] = []
        self.yielded = 0
        self.saw_cancel = False

    @property
    def model_id(self) -> str:
        return self._id

    def describe(self) -> str:
        return f"{self._id} · test"

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        return Generation(text=self.answer)

    def stream(self, request: ChatRequest, cancel=None) -> Iterator[str]:
        self.requests.append(request)
        for i in range(0, len(self.answer), self.piece):
            if cancel is not None and cancel():
                self.saw_cancel = True
                return
            if self.fail and i > 0:
                raise RuntimeError("CUDA error: device-side assert triggered")
            self.yielded += 1
            yield self.answer[i : i + self.piece]

    def sample(self, requests: Sequence[ChatRequest], n: int, temperature: float = 1.0, top_p: float = 0.9,
               cancel=None) -> list[list[Generation]]:
        return [[Generation(text=self.answer)] * n for _ in requests]


def make_volume(modality: str = "CT", body_part: str = "ABDOMEN", description: str = "Axial portal venous") -> Volume:
    n = 3
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    frames = np.stack([((xx * 7 + yy * 3 + k * 50) % 1200 - 200) for k in range(n)]).astype(np.int16)
    a = np.deg2rad(20)  # an oblique plane
    row_dir = np.array([np.cos(a), np.sin(a), 0.0])
    col_dir = np.array([0.0, 0.0, -1.0])
    origins = np.array([[-120.0, -80.0 + 2.5 * k, 40.0] for k in range(n)])
    series = Series(uid="1.2.3.4", number=2, description=description, modality=modality, body_part=body_part)
    return Volume(
        series=series,
        frames=frames,
        slopes=np.ones(n),
        intercepts=np.zeros(n),
        geometry=Geometry(origins=origins, row_direction=row_dir, col_direction=col_dir, spacing=(0.7, 0.7)),
        default_window=Window(400, 40, "abdomen"),
        loaded=n,
    )


FIVE_STEPS = (
    "Step 1: Structure identification\nAxial CT of the upper abdomen with <ref>liver</ref><box>[[50, 100, 450, 700]]</box>.\n"
    "Step 2: Region localization\nA <ref>hypodense lesion</ref><box>[[600, 250, 700, 500]]</box> in the right lobe.\n"
    "Step 3: Detailed description\nRound, well defined, fluid attenuation.\n"
    "Step 4: Holistic analysis\nMost consistent with a simple cyst.\n"
    "Step 5: Report synthesis\nSimple <ref>hypodense lesion</ref><box>[[600, 250, 700, 500]]</box> (cyst).\n"
)

SPEC = ImageSpec(tile_size=56, max_tiles=6)


def test_five_step_answer_becomes_steps_and_findings_in_three_coordinate_systems():
    vol = make_volume()
    engine = ScriptedEngine(FIVE_STEPS)
    answer = Assistant(engine, image_spec=SPEC).ask(vol, 1, Window(400, 40), "Is there a liver lesion?")
    assert [s.title for s in answer.steps] == [
        "Structure identification", "Region localization", "Detailed description", "Holistic analysis",
        "Report synthesis",
    ]
    assert answer.steps[1].text == "A hypodense lesion in the right lobe."
    # the lesion is repeated in the report step: one finding, from the step that first drew it
    assert [(f.phrase, f.step) for f in answer.findings] == [("liver", 1), ("hypodense lesion", 2)]
    lesion = answer.findings[1]
    # the model image is the frame stretched onto its tile canvas: 0–1000 is of the frame's width/height
    assert (lesion.box_px.x0, lesion.box_px.y0, lesion.box_px.x1, lesion.box_px.y1) == pytest.approx(
        (0.6 * COLS, 0.25 * ROWS, 0.7 * COLS, 0.5 * ROWS))
    # patient mm, checked through the series geometry (pixel centres: edge − 0.5)
    geo = vol.geometry
    tl = geo.pixel_to_patient(1, lesion.box_px.x0 - 0.5, lesion.box_px.y0 - 0.5)
    br = geo.pixel_to_patient(1, lesion.box_px.x1 - 0.5, lesion.box_px.y1 - 0.5)
    np.testing.assert_allclose(lesion.box_mm.corners[0], tl)
    np.testing.assert_allclose(lesion.box_mm.corners[2], br)
    assert lesion.box_mm.width_mm == pytest.approx(0.1 * COLS * 0.7)
    assert lesion.model_id == "scripted-xmedgpt" and answer.model_id == "scripted-xmedgpt"
    assert answer.engine == "scripted-xmedgpt · test"
    assert answer.finish_reason == "stop" and answer.parsed.missing_steps == []
    assert answer.timing.first_token_s is not None and answer.timing.total_s >= answer.timing.first_token_s
    assert answer.timing.pieces == engine.yielded


def test_engine_is_given_the_frame_as_the_reader_sees_it():
    vol = make_volume()
    engine = ScriptedEngine("No abnormality.")
    window = Window(80, 40)
    Assistant(engine, image_spec=SPEC).ask(vol, 2, window, "Anything abnormal?", invert=True)
    (req,) = engine.requests
    expected = prepare_model_image(render(vol, 2, window, invert=True), SPEC, pixel_spacing=(0.7, 0.7))
    np.testing.assert_array_equal(req.image, expected.rgb)
    assert req.image.shape == (SPEC.tile_size * expected.plan.rows, SPEC.tile_size * expected.plan.cols, 3)
    assert "Step 2: Region localization" in req.prompt and "Anything abnormal?" in req.prompt
    assert "CT ABDOMEN" in req.prompt
    assert "absent" in req.system  # the guardrail instruction travels with every question


def test_updates_stream_steps_and_boxes_as_they_complete():
    vol = make_volume()
    engine = ScriptedEngine(FIVE_STEPS, piece=5)
    updates: list[AssistantUpdate] = []
    answer = Assistant(engine, image_spec=SPEC).ask(vol, 0, None, "", on_update=updates.append)
    assert len(updates) > 20
    first_box_at = next(i for i, u in enumerate(updates) if u.new_findings)
    # the liver box is shown while the answer is still arriving, well before its end
    assert first_box_at < len(updates) // 3
    assert updates[first_box_at].new_findings[0].phrase == "liver"
    shown = [f for u in updates for f in u.new_findings]
    assert [(f.phrase, f.box_norm) for f in shown] == [(f.phrase, f.box_norm) for f in answer.findings]
    step_counts = [len(u.parsed.steps) for u in updates]
    assert step_counts == sorted(step_counts) and step_counts[-1] == 5
    assert answer.window == vol.default_window


def test_cancel_stops_the_engine_and_keeps_what_arrived():
    vol = make_volume()
    engine = ScriptedEngine(FIVE_STEPS, piece=4)
    stop = threading.Event()

    def on_update(u: AssistantUpdate) -> None:
        if len(u.parsed.steps) >= 2:
            stop.set()

    answer = Assistant(engine, image_spec=SPEC).ask(vol, 0, None, "", cancel=stop.is_set, on_update=on_update)
    assert answer.finish_reason == "cancelled"
    assert engine.yielded < len(FIVE_STEPS) / 4 / 2
    assert [s.index for s in answer.steps] == [1, 2]
    assert [f.phrase for f in answer.findings] == ["liver"]


def test_mismatched_question_is_warned_and_a_box_drawn_anyway_is_flagged():
    vol = make_volume(modality="MR", body_part="BRAIN", description="AX T2")
    engine = ScriptedEngine("<ref>the right kidney</ref><box>[[100, 100, 300, 300]]</box>")
    answer = Assistant(engine, image_spec=SPEC).ask(vol, 0, None, "Locate the right kidney")
    assert answer.task is Task.LOCATE
    assert answer.warnings == ["The question asks about the right kidney but this series is a BRAIN MR."]
    (finding,) = answer.findings
    assert finding.warning == answer.warnings[0]
    assert "<ref>the right kidney</ref>" in engine.requests[0].prompt
    assert "absent" in engine.requests[0].prompt


def test_model_that_says_absent_gives_no_box():
    vol = make_volume(modality="MR", body_part="BRAIN")
    engine = ScriptedEngine("The right kidney is absent from this image; it is a brain MR.")
    answer = Assistant(engine, image_spec=SPEC).ask(vol, 0, None, "locate the right kidney")
    assert answer.findings == [] and answer.parsed.text.startswith("The right kidney is absent")
    assert answer.to_json()["findings"] == []


def test_engine_failure_reaches_the_reader_as_a_message():
    engine = ScriptedEngine(FIVE_STEPS, fail=True)
    with pytest.raises(AssistantError, match="The model stopped with an error: CUDA error"):
        Assistant(engine, image_spec=SPEC).ask(make_volume(), 0, None, "")


def test_slice_that_does_not_exist_is_refused():
    with pytest.raises(AssistantError, match="Slice 9 does not exist"):
        Assistant(ScriptedEngine(""), image_spec=SPEC).ask(make_volume(), 8, None, "")


def test_scripted_engine_satisfies_the_protocol():
    assert isinstance(ScriptedEngine(""), Engine)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from training.model_factory import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-assistant") / "model")


@pytest.mark.slow
def test_real_tiny_model_answers_about_a_frame(tiny_model):
    from inference.engine.local import LocalEngine

    engine = LocalEngine.from_folder(tiny_model, device="cpu", quantization="none")
    spec = ImageSpec.from_preprocessor_config(tiny_model)
    assert (spec.tile_size, spec.max_tiles) == (56, 6)
    assert Assistant(engine).image_spec == spec  # read from the engine's processor when not given
    vol = make_volume()
    updates: list[AssistantUpdate] = []
    assistant = Assistant(engine, image_spec=spec, max_new_tokens=24)
    answer = assistant.ask(vol, 1, Window(400, 40), "Is there a liver lesion?", on_update=updates.append)
    assert answer.model_id == engine.model_id and answer.engine == engine.describe()
    assert answer.raw_text and answer.timing.pieces >= 1 and updates
    # what streamed through the assistant is exactly the model's greedy answer to the same request
    prep = assistant.prepare(vol, 1, Window(400, 40), "Is there a liver lesion?")
    assert answer.raw_text == engine.generate(prep.request).text
    assert answer.image.rgb.shape[:2] == (56 * answer.image.plan.rows, 56 * answer.image.plan.cols)
    for f in answer.findings:  # a random model rarely draws boxes, but any it draws must be valid
        assert 0 <= f.box_px.x0 < f.box_px.x1 <= COLS and 0 <= f.box_px.y0 < f.box_px.y1 <= ROWS
    assert answer.to_json()["model"]["id"] == engine.model_id
