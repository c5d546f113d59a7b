"""The audit trail: an append-only JSON-lines log whose records are chained by SHA-256.

Each line is one :class:`AuditRecord`. Its ``hash`` is the SHA-256 of the
record's canonical JSON (sorted keys, no spaces, UTF-8) without the ``hash``
field, and that JSON includes ``prev``, the previous record's hash (64 zeros for
the first). Changing any field of any record, removing or reordering records,
breaks the chain at that point; :func:`verify` names the first broken link.
Removing records from the *end* leaves a valid chain, so every append also
writes the head (last ``seq`` and ``hash``) to ``<log>.head``; :func:`verify`
compares the log's end with it. Anyone able to rewrite both files and recompute
every hash defeats this; copy the head elsewhere (``xmedgpt audit verify``
prints it) to close that gap.

What is logged: every AI request and output (model id, weights hash, prompt,
reasoning, boxes, reliability) and every reader action on a report (accept,
reject, edit with a diff, box moves, sign, export), with time (UTC) and user.
Patient data stays on the workstation; :func:`export_deidentified` writes a
copy for research without patient identifiers.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.errors import XMedError
from app.core.paths import fsync_dir, write_atomic
from app.report.draft import DraftReport, Edit, Finding, utc_now

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class AuditError(XMedError):
    """The audit log cannot be written or read."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: str
    user: str
    action: str
    study_uid: str
    data: dict[str, Any]
    prev: str
    hash: str = ""

    def body(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("hash")
        return d

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def head_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".head")


class AuditLog:
    """Appends chained records to one log file; safe across processes on POSIX (flock)."""

    def __init__(self, path: Path, user: str | None = None) -> None:
        """``user``: who acts (the reader's name from Settings); None: the operating-system login."""
        self.path = Path(path)
        self.user = user if user is not None else _login()

    # ---- core ----------------------------------------------------------------------
    def append(self, action: str, data: dict[str, Any] | None = None, *, study_uid: str = "", user: str | None = None) -> AuditRecord:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"Cannot write the audit log {self.path}: {exc.strerror}.") from exc
        try:
            with _locked(fd):
                last = _last_record(fd, self.path)
                rec = AuditRecord(
                    seq=last.seq + 1 if last else 1,
                    time=utc_now(),
                    user=self.user if user is None else user,
                    action=action,
                    study_uid=study_uid,
                    data=json.loads(canonical(data or {})),  # plain JSON types only, as verify will see them
                    prev=last.hash if last else GENESIS,
                )
                rec = AuditRecord(**{**asdict(rec), "hash": rec.compute_hash()})
                os.write(fd, rec.to_line().encode("utf-8"))
                os.fsync(fd)
                write_atomic(head_path(self.path), json.dumps({"seq": rec.seq, "hash": rec.hash}) + "\n")
        except OSError as exc:
            raise AuditError(f"Could not write to the audit log: {exc.strerror}.") from exc
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)
        return rec

    # ---- AI ------------------------------------------------------------------------
    def ai_request(self, study_uid: str, *, model_id: str, weights_sha256: str, prompt: str,
                   image: dict[str, Any] | None = None, **extra: Any) -> AuditRecord:
        """The question sent to the model; ``image`` says which frame (SOP UID, frame, window)."""
        return self.append("ai.request", {"model_id": model_id, "weights_sha256": weights_sha256,
                                          "prompt": prompt, "image": image or {}, **extra}, study_uid=study_uid)

    def ai_output(self, study_uid: str, *, model_id: str, weights_sha256: str, text: str,
                  reasoning: Sequence[dict[str, Any]] = (), boxes: Sequence[dict[str, Any]] = (),
                  reliability: dict[str, Any] | None = None, **extra: Any) -> AuditRecord:
        """What the model answered: raw text, reasoning steps, boxes (pixels, with frame) and reliability."""
        return self.append("ai.output", {"model_id": model_id, "weights_sha256": weights_sha256, "text": text,
                                         "reasoning": list(reasoning), "boxes": list(boxes),
                                         "reliability": reliability or {}, **extra}, study_uid=study_uid)

    # ---- reader actions on a report ------------------------------------------------
    def watch(self, report: DraftReport) -> Callable[[], None]:
        """Record that the reader opened ``report`` (patient and study, so the trail says whose it
        was) and log every edit from now on; returns the function that stops it."""
        self.append("report.open", {"report_id": report.report_id, "revision": report.revision,
                                    "study": asdict(report.study), "provenance": asdict(report.provenance),
                                    "signed": report.signed}, study_uid=report.study.study_uid)
        return report.subscribe(lambda r, e: self.report_edit(r, e))

    def report_edit(self, report: DraftReport, edit: Edit) -> AuditRecord:
        return self.append(f"report.{edit.action.replace(' ', '.')}", describe_edit(report, edit),
                           study_uid=report.study.study_uid)

    def export(self, report: DraftReport, kind: str, path: Path, sop_instance_uid: str = "") -> AuditRecord:
        return self.append("report.export", {"report_id": report.report_id, "kind": kind, "path": str(path),
                                             "sop_instance_uid": sop_instance_uid, "signed": report.signed},
                           study_uid=report.study.study_uid)


def describe_edit(report: DraftReport, edit: Edit) -> dict[str, Any]:
    """The audit view of an edit: what changed, as a diff a person can read."""
    d: dict[str, Any] = {"report_id": report.report_id, "revision": edit.revision}
    if edit.signature is not None:
        d["reader_name"] = edit.signature.reader_name
        d["signed_at"] = edit.signature.signed_at
        d["included_findings"] = [f.id for f in report.included_findings()]
        d["rejected_findings"] = [f.id for f in report.findings if f.status.value == "rejected"]
        return d
    if edit.impression_after is not None:
        d["diff"] = text_diff(edit.impression_before or "", edit.impression_after)
        return d
    b, a = edit.before, edit.after
    d["finding_id"] = edit.finding_id
    if a is not None and (b is None or b.origin != a.origin):
        d["origin"] = a.origin.value
    if b is None or a is None:
        d["finding"] = _finding_summary(a or b)
        return d
    if b.status != a.status:
        d["status"] = [b.status.value, a.status.value]
    if b.text != a.text:
        d["diff"] = text_diff(b.text, a.text)
    if b.finding_type != a.finding_type:
        d["finding_type"] = [b.finding_type, a.finding_type]
    if b.boxes != a.boxes:
        d["boxes_before"] = [_box(x) for x in b.boxes]
        d["boxes_after"] = [_box(x) for x in a.boxes]
    return d


def text_diff(before: str, after: str) -> list[str]:
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", lineterm="", n=1))


def _box(b: Any) -> dict[str, Any]:
    return {"xyxy": [b.box.x0, b.box.y0, b.box.x1, b.box.y1], "slice_index": b.slice_index,
            "sop_instance_uid": b.sop_instance_uid, "frame_number": b.frame_number}


def _finding_summary(f: Finding | None) -> dict[str, Any]:
    if f is None:
        return {}
    return {"text": f.text, "status": f.status.value, "origin": f.origin.value, "boxes": [_box(x) for x in f.boxes],
            "reliability": {"score": f.reliability.score, "tier": f.reliability.tier.value} if f.reliability else None}


# ---- reading and verifying -----------------------------------------------------------

@dataclass
class VerifyResult:
    ok: bool
    records: int = 0
    head: str = GENESIS
    broken_seq: int | None = None  # the seq the chain breaks at (the record that fails)
    broken_line: int | None = None  # 1-based line in the file
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return f"Audit log intact: {self.records} records, head {self.head}."
        where = f"record {self.broken_seq}" if self.broken_seq is not None else "the end of the log"
        line = f" (line {self.broken_line})" if self.broken_line is not None else ""
        return f"Audit log BROKEN at {where}{line}: {self.reason}"


def read_records(path: Path) -> Iterator[tuple[int, AuditRecord | None, str]]:
    """(line number, record or None, error) for every non-empty line."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
                yield n, AuditRecord(**d), ""
            except (ValueError, TypeError) as exc:
                yield n, None, f"the line is not a valid record ({exc.__class__.__name__})"


def verify(path: Path) -> VerifyResult:
    """Check every link of the chain and the head; the result names the first broken link."""
    path = Path(path)
    if not path.exists():
        return VerifyResult(ok=True, notes=["No audit log yet."])
    prev_hash, prev_seq, count = GENESIS, 0, 0
    for n, rec, err in read_records(path):
        expected_seq = prev_seq + 1
        if rec is None:
            return VerifyResult(False, count, prev_hash, expected_seq, n, err)
        if rec.compute_hash() != rec.hash:
            return VerifyResult(False, count, prev_hash, rec.seq, n, "the record was altered (its hash does not match its content).")
        if rec.prev != prev_hash:
            return VerifyResult(False, count, prev_hash, rec.seq, n,
                                "the link to the previous record is broken: a record before it was altered or removed.")
        if rec.seq != expected_seq:
            return VerifyResult(False, count, prev_hash, rec.seq, n, f"expected record {expected_seq}, found {rec.seq}.")
        prev_hash, prev_seq, count = rec.hash, rec.seq, count + 1
    result = VerifyResult(True, count, prev_hash)
    hp = head_path(path)
    if not hp.exists():
        if count:
            result.notes.append(f"The head file {hp.name} is missing; removal of the last records cannot be ruled out.")
        return result
    try:
        head = json.loads(hp.read_text(encoding="utf-8"))
        head_seq, head_hash = int(head["seq"]), str(head["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        result.notes.append(f"The head file {hp.name} is unreadable; removal of the last records cannot be ruled out.")
        return result
    if head_seq > count:
        missing = head_seq - count
        return VerifyResult(False, count, prev_hash, count + 1, None,
                            f"the last {missing} record{'s were' if missing > 1 else ' was'} removed "
                            f"(the head says {head_seq} records, the log has {count}).")
    if head_seq == count and head_hash != prev_hash:
        return VerifyResult(False, count, prev_hash, count, None, "the last record does not match the recorded head.")
    if head_seq < count:
        result.notes.append(f"The head file is behind the log ({head_seq} < {count}); a write was interrupted.")
    return result


# ---- file helpers ------------------------------------------------------------------

def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry / no login name in containers
        return ""


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: single-user workstation, one process writes
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _last_record(fd: int, path: Path) -> AuditRecord | None:
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return None
    chunk, pos, tail = 65536, size, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
        body = tail.rstrip(b"\n")
        if b"\n" in body or pos == 0:
            break
    if not tail.endswith(b"\n"):
        raise AuditError(f"The audit log {path.name} ends with an unfinished record; run 'xmedgpt audit verify'.")
    line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return AuditRecord(**json.loads(line))
    except (ValueError, TypeError) as exc:
        raise AuditError(f"The last record of the audit log {path.name} is damaged; run 'xmedgpt audit verify'.") from exc


# ---- de-identified export ----------------------------------------------------------

#: Keys whose values identify a patient or a person; dropped (people become pseudonyms).
PATIENT_KEYS = frozenset({
    "patient_name", "patient_id", "patient_birth_date", "patient_sex", "patient_age", "other_patient_ids",
    "accession_number", "study_date", "study_time", "referring_physician", "institution_name",
    "department_name", "station_name", "path", "at", "signed_at", "study_description",
})
PERSON_KEYS = frozenset({"user", "reader_name", "operator"})
_UID_RE = re.compile(r"(?<![\d.])[0-2](?:\.(?:0|[1-9]\d*)){3,}(?![\d.])")
_DATE_RE = re.compile(r"\b(?:19|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])(?:[T ][0-9:.+Z-]+)?\b")


@dataclass
class _Pseudonymizer:
    salt: str
    people: dict[str, str] = field(default_factory=dict)
    identifiers: set[str] = field(default_factory=set)

    def uid(self, uid: str) -> str:
        digest = hashlib.sha256((self.salt + uid).encode("utf-8")).hexdigest()
        return f"2.25.{int(digest[:30], 16)}"

    def person(self, name: str) -> str:
        if not name:
            return ""
        return self.people.setdefault(name, f"reader-{len(self.people) + 1}")

    def text(self, s: str) -> str:
        for ident in sorted(self.identifiers, key=len, reverse=True):
            s = re.sub(rf"(?<!\w){re.escape(ident)}(?!\w)", "[removed]", s, flags=re.I)
        s = _UID_RE.sub(lambda m: self.uid(m.group(0)), s)
        return _DATE_RE.sub("[date]", s)

    def collect(self, obj: Any) -> None:
        """Learn the identifying values (names, IDs) so they can be scrubbed from free text too."""
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in PATIENT_KEYS | PERSON_KEYS and isinstance(v, str) and len(v.strip()) >= 3:
                    if k not in ("path", "at", "signed_at", "study_date", "study_time"):
                        self.identifiers.add(v.strip())
                        self.identifiers.update(p for p in re.split(r"[\^ ]+", v) if len(p) >= 3)
                self.collect(v)
        elif isinstance(obj, list):
            for v in obj:
                self.collect(v)

    def scrub(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in PATIENT_KEYS:
                    continue
                out[k] = self.person(v) if k in PERSON_KEYS and isinstance(v, str) else self.scrub(v)
            return out
        if isinstance(obj, list):
            return [self.scrub(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def export_deidentified(log_path: Path, out: Path, *, salt: str | None = None) -> int:
    """Write a de-identified copy of a verified log for research; returns the number of records.

    UIDs become salted hashes ("2.25.…", consistent within one export, unlinkable
    across exports unless the same ``salt`` is given); patient and study
    identifiers, paths and dates are dropped; users become "reader-1", "reader-2";
    names and IDs seen anywhere are scrubbed from free text; absolute times become
    seconds since the first exported record. The copy is a new hash chain of its own.
    """
    log_path, out = Path(log_path), Path(out)
    check = verify(log_path)
    if not check.ok:
        raise AuditError(f"The audit log failed verification, so it was not exported. {check.summary()}")
    records = [rec for _, rec, _ in read_records(log_path) if rec is not None]
    p = _Pseudonymizer(salt if salt is not None else os.urandom(16).hex())
    for rec in records:
        p.collect(rec.data)
        p.collect({"user": rec.user})
    t0 = _parse_time(records[0].time) if records else 0.0
    if out.exists():
        out.unlink()
    target = AuditLog(out)
    for rec in records:
        data = p.scrub(rec.data)
        data["t_seconds"] = round(_parse_time(rec.time) - t0, 3)
        target.append(rec.action, data, study_uid=p.uid(rec.study_uid) if rec.study_uid else "",
                      user=p.person(rec.user))
    return len(records)


def _parse_time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
