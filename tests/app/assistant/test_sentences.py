"""The sentence the assistant links and checks is the report's finding text and its impression tint.

The assistant's reliability pass checks a boxed phrase by its sentence
(``app.assistant.session.draft_findings``), the report takes a sentence as the
finding's text (``app.report.from_answer.draft_from_answer``) and tints the impression
sentence by sentence (``app.report.display.sentence_reliability``). All three cut text
with ``inference.phrases``, so abbreviations and decimals cannot make them disagree.
"""

from __future__ import annotations

from app.assistant.ask import Assistant
from app.assistant.session import draft_findings, frame_ref
from app.dicom.model import Window
from app.report.display import sentence_reliability
from app.report.draft import FindingReliability, Provenance, StudyContext
from app.report.from_answer import draft_from_answer
from inference.phrases import phrase_key
from inference.reliability.scoring import Tier
from tests.app.assistant.test_ask import SPEC, ScriptedEngine, make_volume

ANSWER = (
    "Step 1: Structure identification\nAxial CT of the upper abdomen, reviewed with Dr. Smith.\n"
    "Step 2: Region localization\nLiver normal in size. There is an approx. 2.5 cm "
    "<ref>hypodense lesion</ref><box>[[600, 250, 700, 500]]</box> in the right lobe, i.e. segment 7. "
    "The spleen is normal.\n"
    "Step 3: Detailed description\nRound, well defined, approx. 10 HU.\n"
    "Step 4: Holistic analysis\nMost consistent with a simple cyst.\n"
    "Step 5: Report synthesis\nSimple approx. 2.5 cm hypodense lesion (cyst) in the right lobe. No other lesion seen.\n"
)
SENTENCE = "There is an approx. 2.5 cm hypodense lesion in the right lobe, i.e. segment 7."


def test_assistant_link_and_report_finding_name_the_same_sentence():
    volume = make_volume()
    answer = Assistant(ScriptedEngine(ANSWER), image_spec=SPEC).ask(volume, 1, Window(400, 40), "Any lesion?")
    (checked,) = draft_findings(answer)
    key = phrase_key("hypodense lesion")
    report = draft_from_answer(
        StudyContext("1.2.3", modality="CT"), answer.steps, answer.findings, lambda k: frame_ref(volume, k),
        Provenance("scripted-xmedgpt"), {key: FindingReliability(0.5, Tier.AMBER)},
    )
    (finding,) = report.findings
    assert checked.id == key and checked.text == SENTENCE
    assert finding.text == checked.text
    # the AI impression is proposed and tinted by whole sentences: "2.5" and "approx." do not cut it
    assert [s.text for s in report.ai_sentences] == [
        "Simple approx. 2.5 cm hypodense lesion (cyst) in the right lobe.", "No other lesion seen."]
    impression = " ".join(s.text for s in report.ai_sentences)
    spans = sentence_reliability(impression, report.findings)
    assert [(impression[a:b], tier) for a, b, tier in spans] == [
        ("Simple approx. 2.5 cm hypodense lesion (cyst) in the right lobe.", Tier.AMBER),
        ("No other lesion seen.", Tier.AMBER),
    ]
