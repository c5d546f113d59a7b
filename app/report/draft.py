"""The draft report: findings the reader decides on, an impression, and who signed it.

Qt-free. The assistant fills a :class:`DraftReport` with AI findings (status
``proposed``); the reader accepts, rejects or edits each one, may add their own,
writes the impression, and signs. Signing needs a reader name and every AI
finding decided; a signed report refuses further edits.

Besides findings and the impression a report has the sections a radiologist writes
first: indication, technique and comparison (:data:`SECTIONS`). After signing, the
report stays as signed; a correction or late information goes into an
:class:`Addendum` (text, author, time) appended to it and signed on its own
(:meth:`DraftReport.add_addendum`, :meth:`DraftReport.sign_addendum`). Each finding
remembers the display window it was found or drawn in (``Finding.window``), so its key
image is shown as the reader saw it.

Every change goes through :meth:`DraftReport.apply` as an :class:`Edit` that
carries the affected state *before and after*. That one record serves undo/redo
(apply the reverse), the workspace journal (replay the "after" state) and the
audit trail (the diff). Listeners registered with :meth:`DraftReport.subscribe`
see every edit, including undo and redo.

The rest of the report lives beside this module: :mod:`app.report.serialize`
(dicts for the workspace), :mod:`app.report.templates` (per-modality wording),
:mod:`app.report.display` (impression tints) and :mod:`app.report.from_answer`
(the assistant's answer as a draft).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum

from app.core.errors import XMedError
from app.dicom.model import Window
from inference.reliability.scoring import Tier, worst_tier
from inference.types import Box

log = logging.getLogger(__name__)

#: the free-text sections of a report besides findings and impression, in report order
SECTIONS = ("indication", "technique", "comparison")


class ReportError(XMedError):
    """An edit or sign-off the report cannot take, with the reason."""


class FindingStatus(str, Enum):
    PROPOSED = "proposed"  # from the AI, not yet looked at
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EDITED = "edited"  # accepted with the reader's changes


class Origin(str, Enum):
    AI = "ai"
    READER = "reader"


class SentenceStatus(str, Enum):
    """An AI impression sentence: a proposal until the reader accepts (or rejects) it."""

    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


#: an impression sentence that says there is nothing ("No focal lesion.", "Unremarkable study.")
_NEGATIVE = re.compile(
    r"\b(no|without|negative for|absence of|free of)\b[^.;]*\b(lesions?|mass(es)?|nodules?|abnormalit(y|ies)|"
    r"findings?|pathology|tumou?rs?|effusions?|opacit(y|ies)|consolidations?|infiltrates?|hemorrhage|bleed)\b"
    r"|\bunremarkable\b|\b(normal|negative) (study|exam|examination|scan|ct|mri?)\b",
    re.I)


#: a negative sentence about anything abnormal (not one kind of finding)
_GENERAL = re.compile(r"\b(lesions?|abnormalit(y|ies)|findings?|pathology|tumou?rs?)\b|\bunremarkable\b"
                      r"|\b(normal|negative) (study|exam|examination|scan|ct|mri?)\b", re.I)


@dataclass(frozen=True)
class AiSentence:
    """One sentence of the impression the AI drafted: its text, the reader's decision, the findings it
    names (report finding ids, by :func:`inference.phrases.phrase_key` of their phrase or their finding
    type) and ``caution``: why it needs particular care (a guardrail warning, a red answer)."""

    id: str
    text: str
    status: SentenceStatus = SentenceStatus.PROPOSED
    finding_ids: tuple[str, ...] = ()
    caution: str = ""

    @property
    def decided(self) -> bool:
        return self.status is not SentenceStatus.PROPOSED

    @property
    def included(self) -> bool:
        return self.status is SentenceStatus.ACCEPTED

    @property
    def negative(self) -> bool:
        """Whether the sentence says there is no lesion / nothing abnormal."""
        return bool(_NEGATIVE.search(self.text))


@dataclass(frozen=True)
class FindingReliability:
    """The reliability index of one finding: score in [0, 1] (1 = consistent answers) and its tier.

    The tier is green, amber or red: a finding that was not assessed has no reliability at all
    (``Finding.reliability`` None), never :attr:`Tier.NONE`.
    """

    score: float
    tier: Tier
    detail: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"reliability score {self.score} outside [0, 1]")
        tier = Tier(self.tier)
        if tier is Tier.NONE:
            raise ValueError("a finding's reliability tier is green, amber or red, not 'none'")
        object.__setattr__(self, "tier", tier)


@dataclass(frozen=True)
class ReportBox:
    """A box on one frame of the study: image pixels (x = column, y = row, x1/y1 exclusive edges)."""

    box: Box
    slice_index: int  # position in the loaded series (the viewer's frame index)
    sop_instance_uid: str
    series_uid: str
    frame_number: int = 1  # 1-based frame within a multi-frame instance
    tracking_uid: str = field(default_factory=lambda: _new_uid())


@dataclass(frozen=True)
class Finding:
    id: str
    text: str
    boxes: tuple[ReportBox, ...] = ()
    origin: Origin = Origin.AI
    status: FindingStatus = FindingStatus.PROPOSED
    finding_type: str = ""  # short term for coding, e.g. "nodule"; empty: a generic finding
    reliability: FindingReliability | None = None
    source_step: int | None = None  # 1..5: the reasoning step the finding came from
    ai_text: str = ""  # what the model wrote, kept when the reader edits
    window: Window | None = None  # the display window it was found (AI) or drawn (reader) in

    @property
    def decided(self) -> bool:
        return self.status is not FindingStatus.PROPOSED

    @property
    def included(self) -> bool:
        """Whether the finding goes into the report the reader signs."""
        return self.status in (FindingStatus.ACCEPTED, FindingStatus.EDITED)

    @property
    def edited_by_reader(self) -> bool:
        """An AI finding the reader moved (box) or rewrote (text): it is the reader's now."""
        return self.origin is Origin.AI and self.status is FindingStatus.EDITED

    @property
    def ai_certainty(self) -> FindingReliability | None:
        """The AI's reliability as exported: only for a checked AI finding the reader did not edit
        (an edited finding carries no AI certainty, a reader's own never has one)."""
        if self.origin is not Origin.AI or self.status is FindingStatus.EDITED:
            return None
        return self.reliability


@dataclass(frozen=True)
class StudyContext:
    study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""


@dataclass(frozen=True)
class Provenance:
    """Which model wrote the AI part of the draft."""

    model_id: str = ""
    model_version: str = ""
    weights_sha256: str = ""
    engine: str = ""  # e.g. "XMedGPT-8B · 4-bit · RTX A4000"


@dataclass(frozen=True)
class Signature:
    reader_name: str
    signed_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Addendum:
    """Text added to a signed report, by one reader, signed on its own (the report itself stays as signed)."""

    id: str
    text: str = ""
    author: str = ""  # who started it (the reader's name from Settings)
    created_at: str = ""  # ISO 8601, UTC
    signature: Signature | None = None

    @property
    def signed(self) -> bool:
        return self.signature is not None


@dataclass(frozen=True)
class Edit:
    """One change to a report. ``index`` is the finding's position (before for removal, after otherwise).

    Finding edits carry ``before``/``after`` (None: the finding did not exist / no
    longer exists); impression edits carry ``impression_before``/``impression_after``;
    section edits (indication, technique, comparison) ``section`` and
    ``section_before``/``section_after``; sign-off carries ``signature``; addendum edits
    ``addendum_before``/``addendum_after`` (they may follow the sign-off and are not undoable).
    """

    action: str
    finding_id: str | None = None
    index: int = -1
    before: Finding | None = None
    after: Finding | None = None
    impression_before: str | None = None
    impression_after: str | None = None
    signature: Signature | None = None
    revision: int = 0
    at: str = ""
    section: str | None = None
    section_before: str | None = None
    section_after: str | None = None
    addendum_before: Addendum | None = None
    addendum_after: Addendum | None = None
    #: the AI impression sentences before and after (None: unchanged); a finding's edit may carry them
    #: too (rejecting a finding rejects the sentences naming it, in the same undoable step)
    sentences_before: tuple[AiSentence, ...] | None = None
    sentences_after: tuple[AiSentence, ...] | None = None

    def reversed(self, action: str) -> "Edit":
        return replace(
            self,
            action=action,
            before=self.after,
            after=self.before,
            impression_before=self.impression_after,
            impression_after=self.impression_before,
            section_before=self.section_after,
            section_after=self.section_before,
            sentences_before=self.sentences_after,
            sentences_after=self.sentences_before,
        )


Listener = Callable[["DraftReport", Edit], None]


@dataclass
class DraftReport:
    study: StudyContext
    findings: list[Finding] = field(default_factory=list)
    impression: str = ""  # the reader's own impression text
    #: the impression the AI drafted, sentence by sentence; only accepted ones are signed
    #: (:meth:`impression_text`). A draft saved before these existed has none: its impression is reader text.
    ai_sentences: list[AiSentence] = field(default_factory=list)
    indication: str = ""
    technique: str = ""
    comparison: str = ""
    provenance: Provenance = field(default_factory=Provenance)
    template: str = ""  # empty: the template for the study's modality
    report_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=lambda: utc_now())
    revision: int = 0  # increases with every applied edit (journal ordering)
    signature: Signature | None = None
    addenda: list[Addendum] = field(default_factory=list)
    _undo: list[Edit] = field(default_factory=list, repr=False, compare=False)
    _redo: list[Edit] = field(default_factory=list, repr=False, compare=False)
    _listeners: list[Listener] = field(default_factory=list, repr=False, compare=False)

    # ---- queries ----------------------------------------------------------------
    @property
    def signed(self) -> bool:
        return self.signature is not None

    def finding(self, finding_id: str) -> Finding:
        for f in self.findings:
            if f.id == finding_id:
                return f
        raise ReportError(f"That finding is no longer in the report (id {finding_id}).")

    def index_of(self, finding_id: str) -> int:
        for i, f in enumerate(self.findings):
            if f.id == finding_id:
                return i
        raise ReportError(f"That finding is no longer in the report (id {finding_id}).")

    def undecided(self) -> list[Finding]:
        return [f for f in self.findings if f.origin is Origin.AI and not f.decided]

    def included_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.included]

    def ai_sentence(self, sentence_id: str) -> AiSentence:
        for s in self.ai_sentences:
            if s.id == sentence_id:
                return s
        raise ReportError(f"That impression sentence is no longer in the report (id {sentence_id}).")

    def undecided_sentences(self) -> list[AiSentence]:
        return [s for s in self.ai_sentences if not s.decided]

    def sentence_tier(self, sentence: AiSentence) -> Tier | None:
        """The least reliable tier of the (not rejected) findings the sentence names; None: none assessed."""
        tiers = [f.reliability.tier for f in self.findings
                 if f.id in sentence.finding_ids and f.reliability is not None
                 and f.status is not FindingStatus.REJECTED]
        return worst_tier(tiers) if tiers else None

    def contradicts(self, sentence: AiSentence) -> list[Finding]:
        """The included findings a negative AI sentence contradicts: a general one ("No focal lesion.",
        "Unremarkable study.") every included finding, a specific one ("No pleural effusion.") those of
        its kind (finding type or text named in it)."""
        if not sentence.negative or sentence.status is SentenceStatus.REJECTED:
            return []
        general = bool(_GENERAL.search(sentence.text))
        low = sentence.text.lower()

        def named(f: Finding) -> bool:
            kind = f.finding_type.strip().lower()
            return bool(kind) and re.search(rf"\b{re.escape(kind)}(s|es)?\b", low) is not None

        return [f for f in self.included_findings() if general or named(f)]

    def impression_text(self) -> str:
        """The impression that is signed and exported: the accepted AI sentences, then the reader's text."""
        ai = " ".join(s.text.strip() for s in self.ai_sentences if s.included and s.text.strip())
        return "\n".join(x for x in (ai, self.impression.strip()) if x)

    def section(self, name: str) -> str:
        """The text of a section (:data:`SECTIONS`)."""
        if name not in SECTIONS:
            raise ReportError(f"A report has no section '{name}'.")
        return getattr(self, name)

    def addendum(self, addendum_id: str) -> Addendum:
        for a in self.addenda:
            if a.id == addendum_id:
                return a
        raise ReportError(f"That addendum is no longer in the report (id {addendum_id}).")

    def pending_addendum(self) -> Addendum | None:
        """The addendum being written (not signed yet), if any."""
        return next((a for a in self.addenda if not a.signed), None)

    def signed_addenda(self) -> list[Addendum]:
        return [a for a in self.addenda if a.signed]

    def addendum_blockers(self, addendum_id: str, reader_name: str) -> list[str]:
        """Why the addendum cannot be signed now, as sentences; empty when it can."""
        a = self.addendum(addendum_id)
        reasons = []
        if a.signed:
            reasons.append("The addendum is already signed.")
        if not reader_name.strip():
            reasons.append("Enter your name in Settings before signing.")
        if not a.text.strip():
            reasons.append("Write the addendum first.")
        return reasons

    def sign_blockers(self, reader_name: str) -> list[str]:
        """Why the report cannot be signed now, as sentences; empty when it can."""
        reasons = []
        if self.signed:
            reasons.append("The report is already signed.")
        if not reader_name.strip():
            reasons.append("Enter your name in Settings before signing.")
        n = len(self.undecided())
        if n:
            reasons.append(f"{n} AI finding{'s' if n > 1 else ''} still to accept or reject.")
        n = len(self.undecided_sentences())
        if n:
            contra = sum(1 for s in self.undecided_sentences() if self.contradicts(s))
            also = f" ({contra} contradicting an accepted finding)" if contra else ""
            reasons.append(f"{n} AI impression sentence{'s' if n > 1 else ''} still to accept or reject{also}.")
        return reasons

    @property
    def can_undo(self) -> bool:
        return bool(self._undo) and not self.signed

    @property
    def can_redo(self) -> bool:
        return bool(self._redo) and not self.signed

    # ---- listeners --------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ---- edits ------------------------------------------------------------------
    def add_finding(
        self,
        text: str,
        boxes: Iterable[ReportBox] = (),
        *,
        origin: Origin = Origin.READER,
        finding_type: str = "",
        reliability: FindingReliability | None = None,
        source_step: int | None = None,
        window: Window | None = None,
    ) -> Finding:
        status = FindingStatus.PROPOSED if origin is Origin.AI else FindingStatus.ACCEPTED
        f = Finding(
            id=uuid.uuid4().hex[:12],
            text=text.strip(),
            boxes=tuple(boxes),
            origin=origin,
            status=status,
            finding_type=finding_type,
            reliability=reliability,
            source_step=source_step,
            ai_text=text.strip() if origin is Origin.AI else "",
            window=window,
        )
        self.apply(Edit("add", f.id, len(self.findings), None, f, **self._sentences_following(None, f)))
        return f

    # ---- AI impression sentences: one click each, audited, undoable ----
    def accept_sentence(self, sentence_id: str) -> None:
        """The reader takes an AI impression sentence into the report (an explicit, audited decision)."""
        self._set_sentence("accept_sentence", sentence_id, SentenceStatus.ACCEPTED)

    def reject_sentence(self, sentence_id: str) -> None:
        self._set_sentence("reject_sentence", sentence_id, SentenceStatus.REJECTED)

    def reset_sentence(self, sentence_id: str) -> None:
        self._set_sentence("reset_sentence", sentence_id, SentenceStatus.PROPOSED)

    def add_ai_sentences(self, sentences: Iterable[AiSentence]) -> None:
        """Add AI impression sentences (a further answer); the ones already there by text are skipped."""
        have = {s.text.strip() for s in self.ai_sentences}
        new = [s for s in sentences if s.text.strip() and s.text.strip() not in have]
        if new:
            before = tuple(self.ai_sentences)
            self.apply(Edit("ai_sentences", sentences_before=before, sentences_after=(*before, *new)))

    def set_sentence_caution(self, caution: str) -> None:
        """Mark every AI sentence not yet decided as needing care (a red answer); not an edit of the
        reader's (no undo), applied like the AI's reliability."""
        before = tuple(self.ai_sentences)
        after = tuple(replace(s, caution=s.caution or caution) if not s.decided else s for s in before)
        if after != before:
            self.replay(Edit("sentence_caution", sentences_before=before, sentences_after=after,
                             revision=self.revision))

    def accept(self, finding_id: str) -> None:
        """Accept a finding; an AI finding the reader changed stays marked as edited."""
        f = self.finding(finding_id)
        changed = f.origin is Origin.AI and (f.status is FindingStatus.EDITED or f.text != f.ai_text)
        self._set_finding("accept", replace(f, status=FindingStatus.EDITED if changed else FindingStatus.ACCEPTED))

    def reject(self, finding_id: str) -> None:
        self._set_finding("reject", replace(self.finding(finding_id), status=FindingStatus.REJECTED))

    def reset(self, finding_id: str) -> None:
        """Back to undecided (an AI finding only)."""
        f = self.finding(finding_id)
        if f.origin is not Origin.AI:
            raise ReportError("Only AI findings can be set back to undecided.")
        self._set_finding("reset", replace(f, status=FindingStatus.PROPOSED))

    def edit_text(self, finding_id: str, text: str) -> None:
        f = self.finding(finding_id)
        text = text.strip()
        if not text:
            raise ReportError("A finding needs some text; reject or delete it instead.")
        if text == f.text:
            return
        self._set_finding("edit_text", replace(f, text=text, status=self._edited_status(f)))

    def set_finding_type(self, finding_id: str, finding_type: str) -> None:
        f = self.finding(finding_id)
        self._set_finding("edit_type", replace(f, finding_type=finding_type.strip()))

    def move_box(self, finding_id: str, box_index: int, box: Box) -> None:
        """The reader moved or resized a box (image pixels on the same frame)."""
        f = self.finding(finding_id)
        if not 0 <= box_index < len(f.boxes):
            raise ReportError("That box is no longer part of the finding.")
        if box.width <= 0 or box.height <= 0:
            raise ReportError("A box needs a width and a height.")
        boxes = list(f.boxes)
        if boxes[box_index].box == box:
            return
        boxes[box_index] = replace(boxes[box_index], box=box)
        self._set_finding("move_box", replace(f, boxes=tuple(boxes), status=self._edited_status(f)))

    def add_box(self, finding_id: str, box: ReportBox) -> None:
        f = self.finding(finding_id)
        self._set_finding("add_box", replace(f, boxes=(*f.boxes, box), status=self._edited_status(f)))

    def remove_box(self, finding_id: str, box_index: int) -> None:
        f = self.finding(finding_id)
        if not 0 <= box_index < len(f.boxes):
            raise ReportError("That box is no longer part of the finding.")
        boxes = f.boxes[:box_index] + f.boxes[box_index + 1:]
        self._set_finding("remove_box", replace(f, boxes=boxes, status=self._edited_status(f)))

    def delete_finding(self, finding_id: str) -> None:
        """Remove a reader's own finding. AI findings are rejected, not deleted, so the record stays."""
        f = self.finding(finding_id)
        if f.origin is Origin.AI:
            raise ReportError("AI findings cannot be deleted; reject them instead.")
        self.apply(Edit("delete", f.id, self.index_of(f.id), f, None))

    def set_impression(self, text: str) -> None:
        if text == self.impression:
            return
        self.apply(Edit("impression", impression_before=self.impression, impression_after=text))

    def set_section(self, name: str, text: str) -> None:
        """Indication, technique or comparison (:data:`SECTIONS`)."""
        before = self.section(name)
        if text == before:
            return
        self.apply(Edit("section", section=name, section_before=before, section_after=text))

    def add_addendum(self, text: str = "", author: str = "", when: datetime | None = None) -> Addendum:
        """Start an addendum to the signed report (one at a time; sign it with :meth:`sign_addendum`)."""
        if not self.signed:
            raise ReportError("Addenda are added to a signed report; change the draft itself instead.")
        if self.pending_addendum() is not None:
            raise ReportError("An addendum is already being written; sign it first.")
        a = Addendum(uuid.uuid4().hex[:12], text.strip(), author.strip(), utc_now(when))
        self.apply(Edit("addendum", addendum_after=a))
        return a

    def edit_addendum(self, addendum_id: str, text: str) -> None:
        a = self.addendum(addendum_id)
        if a.signed:
            raise ReportError("This addendum is signed and can no longer be changed.")
        if text == a.text:
            return
        self.apply(Edit("addendum_text", addendum_before=a, addendum_after=replace(a, text=text)))

    def sign_addendum(self, addendum_id: str, reader_name: str, when: datetime | None = None) -> Signature:
        blockers = self.addendum_blockers(addendum_id, reader_name)
        if blockers:
            raise ReportError("Cannot sign the addendum yet: " + " ".join(blockers))
        a = self.addendum(addendum_id)
        sig = Signature(reader_name.strip(), utc_now(when))
        self.apply(Edit("sign_addendum", addendum_before=a,
                        addendum_after=replace(a, text=a.text.strip(), author=a.author or sig.reader_name,
                                               signature=sig)))
        return sig

    def sign(self, reader_name: str, when: datetime | None = None) -> Signature:
        blockers = self.sign_blockers(reader_name)
        if blockers:
            raise ReportError("Cannot sign yet: " + " ".join(blockers))
        sig = Signature(reader_name.strip(), utc_now(when))
        self.apply(Edit("sign", signature=sig))
        return sig

    def undo(self) -> Edit | None:
        if not self.can_undo:
            return None
        edit = self._undo[-1]

        def move(_: Edit) -> None:
            self._redo.append(self._undo.pop())

        return self._commit(edit.reversed(f"undo {edit.action}"), move)

    def redo(self) -> Edit | None:
        if not self.can_redo:
            return None
        edit = self._redo[-1]

        def move(_: Edit) -> None:
            self._undo.append(self._redo.pop())

        return self._commit(replace(edit, action=f"redo {edit.action}"), move)

    def apply(self, edit: Edit) -> Edit:
        """Apply a new edit (undoable, clears redo) and tell the listeners."""

        def record(done: Edit) -> None:
            if done.signature is None and done.addendum_after is None:
                self._undo.append(done)
                self._redo.clear()

        return self._commit(edit, record)

    def replay(self, edit: Edit) -> None:
        """Apply an edit's "after" state without undo history or listeners (restoring from a journal)."""
        self._mutate(edit)
        self.revision = max(self.revision, edit.revision)

    # ---- internals --------------------------------------------------------------
    @staticmethod
    def _edited_status(f: Finding) -> FindingStatus:
        return FindingStatus.EDITED if f.origin is Origin.AI else f.status

    def _set_finding(self, action: str, after: Finding) -> None:
        before = self.finding(after.id)
        if before == after:
            return
        self.apply(Edit(action, after.id, self.index_of(after.id), before, after,
                        **self._sentences_following(before, after)))

    def _contradicted_by(self, s: AiSentence, f: Finding) -> bool:
        probe = DraftReport(self.study, findings=[f])
        return bool(probe.contradicts(s))

    def _set_sentence(self, action: str, sentence_id: str, status: SentenceStatus) -> None:
        s = self.ai_sentence(sentence_id)
        if s.status is status:
            return
        before = tuple(self.ai_sentences)
        after = tuple(replace(x, status=status) if x.id == sentence_id else x for x in before)
        self.apply(Edit(action, sentences_before=before, sentences_after=after))

    def _sentences_following(self, before: Finding | None, after: Finding) -> dict:
        """The impression follows the findings: a rejected finding takes the AI sentences naming it
        with it; a finding that comes into the report sends accepted negative AI sentences ("No focal
        lesion.") back to undecided. Empty when no sentence changes."""
        old = tuple(self.ai_sentences)
        new = []
        for s in old:
            if after.status is FindingStatus.REJECTED and after.id in s.finding_ids \
                    and s.status is not SentenceStatus.REJECTED:
                s = replace(s, status=SentenceStatus.REJECTED)
            elif after.included and not (before is not None and before.included) \
                    and s.status is SentenceStatus.ACCEPTED and self._contradicted_by(s, after):
                s = replace(s, status=SentenceStatus.PROPOSED)
            new.append(s)
        new_t = tuple(new)
        return {} if new_t == old else {"sentences_before": old, "sentences_after": new_t}

    def _commit(self, edit: Edit, bookkeeping: Callable[[Edit], None]) -> Edit:
        """Apply, update undo/redo (``bookkeeping``), then tell the listeners: they see a consistent report."""
        if self.signed and edit.addendum_after is None:
            raise ReportError("This report is signed and can no longer be changed; add an addendum instead.")
        if edit.addendum_before is not None and self.addendum(edit.addendum_before.id).signed:
            raise ReportError("This addendum is signed and can no longer be changed.")
        edit = replace(edit, revision=self.revision + 1, at=utc_now())
        self._mutate(edit)
        self.revision = edit.revision
        bookkeeping(edit)
        for listener in list(self._listeners):
            try:
                listener(self, edit)
            except Exception:  # a failing listener must not lose the reader's edit
                log.exception("report listener failed for %s", edit.action)
        return edit

    def _mutate(self, edit: Edit) -> None:
        if edit.signature is not None:
            self.signature = edit.signature
            return
        if edit.addendum_after is not None:
            a = edit.addendum_after
            pos = next((i for i, old in enumerate(self.addenda) if old.id == a.id), None)
            if pos is None:
                self.addenda.append(a)
            else:
                self.addenda[pos] = a
            return
        if edit.sentences_after is not None:
            self.ai_sentences = list(edit.sentences_after)
            if edit.finding_id is None:
                return
        if edit.section is not None:
            if edit.section in SECTIONS and edit.section_after is not None:
                setattr(self, edit.section, edit.section_after)
            return
        if edit.impression_after is not None:
            self.impression = edit.impression_after
            return
        fid = edit.finding_id
        pos = next((i for i, f in enumerate(self.findings) if f.id == fid), None)
        if edit.after is None:
            if pos is not None:
                del self.findings[pos]
        elif pos is None:
            self.findings.insert(min(max(edit.index, 0), len(self.findings)), edit.after)
        else:
            self.findings[pos] = edit.after


def utc_now(when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


def _new_uid() -> str:
    # DICOM UID from a UUID (PS3.5 B.2): "2.25." + the UUID as an integer.
    return f"2.25.{uuid.uuid4().int}"
