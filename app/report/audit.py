"""The audit trail: an append-only JSON-lines log whose records are chained by SHA-256.

Each line is one :class:`AuditRecord`. Its ``hash`` is the SHA-256 of the
record's canonical JSON (sorted keys, no spaces, UTF-8) without the ``hash``
field, and that JSON includes ``prev``, the previous record's hash (64 zeros for
the first). Changing any field of any record, removing or reordering records,
breaks the chain at that point; :func:`verify` names the first broken link.
Removing records from the *end*, or appending records with valid hashes, leaves a
valid chain, so every append also writes the head to ``<log>.head`` in two steps:
before the line, a *pending* head (the new record's ``seq`` and ``hash`` and the
previous hash), after the fsynced line, the *committed* head (``seq``, ``hash``).
A crash therefore leaves the head either matching the log's end or pending for
exactly the record being written (written or not); it never lags behind. :func:`verify`
fails when the head is missing or unreadable while the log has records, says
fewer records than the log has (records appended behind the workstation's back,
even one), more (records removed), or another hash. :meth:`AuditLog.append` refuses
to write past such a mismatch (it would hide it) and past an unfinished last line.

:func:`repair` (``xmedgpt audit repair``) is the way out, and it is never silent: an
unfinished last line (a crash mid-write) is moved to a side file
``<log>.damaged-<UTC time>`` and a ``audit.repair`` record in the chain says what
was sealed (size, SHA-256, side file) and what the head said; :func:`verify` lists
every repair record as a note. Damage anywhere else in the chain is not a crash's
trace and is not repaired.

Anyone able to rewrite both files and recompute every hash defeats this; copy the
head elsewhere (``xmedgpt audit verify`` prints it) to close that gap.

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
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core import strict_json
from app.core.errors import XMedError
from app.core.paths import fsync_dir, write_atomic
from app.report.draft import DraftReport, Edit, Finding, utc_now

log = logging.getLogger(__name__)

GENESIS = "0" * 64
MAX_RECORD_DEPTH = 200  # nesting of a record's data (far below the interpreter's recursion limit)
MAX_HEAD_BYTES = 4096
REPAIR_ACTION = "audit.repair"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RECORD_FIELDS = ("seq", "time", "user", "action", "study_uid", "data", "prev", "hash")


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


def parse_record(raw: bytes | str) -> AuditRecord:
    """One log line as a record, every field of its type; ``ValueError`` otherwise (never anything else)."""
    d = strict_json.expect_object(strict_json.loads(raw, max_depth=MAX_RECORD_DEPTH, allow_nan=True), "the line")
    strict_json.only_keys(d, _RECORD_FIELDS, "the record")
    return AuditRecord(
        seq=strict_json.expect_int(d, "seq", lo=1),
        time=strict_json.expect_str(d, "time", max_len=64),
        user=strict_json.expect_str(d, "user"),
        action=strict_json.expect_str(d, "action", max_len=200),
        study_uid=strict_json.expect_str(d, "study_uid"),
        data=strict_json.expect_object(d.get("data"), "'data'"),
        prev=strict_json.expect_str(d, "prev", max_len=64),
        hash=strict_json.expect_str(d, "hash", max_len=64),
    )


def _plain_data(data: dict[str, Any] | None) -> dict[str, Any]:
    """``data`` as plain JSON types, exactly as :func:`verify` will read it back (NaN/inf become text)."""
    data = data or {}
    try:
        text = canonical(data) if _json_ok(data) else canonical(_finite(data))
    except RecursionError:
        raise AuditError("The audit record is nested too deeply to be written.") from None
    value = json.loads(text)
    try:
        strict_json.check_tree(value, MAX_RECORD_DEPTH)
    except ValueError as exc:
        raise AuditError(f"The audit record cannot be written: {exc}.") from None
    return value


def _json_ok(data: Any) -> bool:
    try:
        json.dumps(data, allow_nan=False)
        return True
    except ValueError:
        return False


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---- the head ------------------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    """What ``<log>.head`` says: the last record (committed), or the record being written (pending)."""

    seq: int
    hash: str
    pending: bool = False
    prev: str = ""  # pending only: the hash of the record before the one being written

    def to_json(self) -> str:
        d: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.pending:
            d.update(pending=True, prev=self.prev)
        return json.dumps(d) + "\n"

    def describe(self) -> str:
        return f"{'a write of ' if self.pending else ''}record {self.seq} ({self.hash[:12]}…)"


def read_head(log_path: Path) -> tuple[Head | None, str]:
    """``(head, "")``, ``(None, "missing")`` or ``(None, "unreadable (why)")``."""
    hp = head_path(Path(log_path))
    if not os.path.lexists(hp):
        return None, "missing"
    try:
        d = strict_json.expect_object(strict_json.read_file(hp, max_bytes=MAX_HEAD_BYTES), "the head")
        seq = strict_json.expect_int(d, "seq", lo=0)
        digest = strict_json.expect_str(d, "hash", max_len=64)
        pending = strict_json.expect_bool(d, "pending", False)
        prev = strict_json.expect_str(d, "prev", "", max_len=64)
        if not _HEX64.match(digest) or (pending and not _HEX64.match(prev)):
            raise ValueError("the hash is not a SHA-256")
        return Head(seq, digest, pending, prev), ""
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"


def head_mismatch(head: Head | None, head_error: str, count: int, last_hash: str) -> tuple[str, str]:
    """Compare the head with the log's end (``count`` records, the last with ``last_hash``).

    ``("", note)`` when they agree (the note says when a crash interrupted the last write
    harmlessly), ``(reason, "")`` when they do not."""
    if head is None:
        if head_error == "missing":
            if count == 0:
                return "", ""
            return (f"the head file is missing, so records removed from the end cannot be ruled out "
                    f"(the log has {count} record{'s' if count != 1 else ''})"), ""
        return f"the head file is {head_error}", ""
    if head.pending:
        if head.seq == count and head.hash == last_hash:
            return "", "The last write finished but the head was not updated after it (a crash); nothing is missing."
        if head.seq == count + 1 and head.prev == last_hash:
            return "", "A write was interrupted before its record was written (a crash); nothing is missing."
    elif head.seq == count and head.hash == last_hash:
        return "", ""
    if head.seq > count + (1 if head.pending else 0):
        missing = head.seq - count - (1 if head.pending else 0)
        return (f"the last {missing} record{'s were' if missing > 1 else ' was'} removed "
                f"(the head says {head.seq}{' being written' if head.pending else ''}, the log has {count})"), ""
    if head.seq < count:
        extra = count - head.seq
        return (f"{extra} record{'s' if extra > 1 else ''} after record {head.seq} "
                f"{'were' if extra > 1 else 'was'} not written by the workstation (the head ends at record "
                f"{head.seq}, the log at {count}): appended by hand or forged"), ""
    return "the last record does not match the recorded head", ""


class AuditLog:
    """Appends chained records to one log file; safe across processes on POSIX (flock)."""

    def __init__(self, path: Path, user: str | None = None) -> None:
        """``user``: who acts (the reader's name from Settings); None: the operating-system login."""
        self.path = Path(path)
        self.user = user if user is not None else _login()

    # ---- core ----------------------------------------------------------------------
    def append(self, action: str, data: dict[str, Any] | None = None, *, study_uid: str = "", user: str | None = None) -> AuditRecord:
        """Add one record (durable when this returns). :class:`AuditError` when the log cannot be
        written, ends with an unfinished record, or does not match its head."""
        body = _plain_data(data)
        fd, new = self._open(os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            with _locked(fd):
                last = _last_record(fd, self.path)
                self._check_head(last)
                rec = self._write(fd, last, action, body, study_uid, user)
        except OSError as exc:
            raise AuditError(f"Could not write to the audit log: {exc.strerror or exc}.") from exc
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)
        return rec

    def ensure_writable(self) -> None:
        """Raise :class:`AuditError` now if an append would fail (before minutes of work whose record
        could then not be kept). Creates nothing."""
        if not os.path.lexists(self.path):
            head, error = read_head(self.path)
            reason, _ = head_mismatch(head, error, 0, GENESIS)
            if reason:
                raise AuditError(self._mismatch_message(reason))
            return
        fd, _ = self._open(os.O_RDWR | os.O_APPEND)
        try:
            with _locked(fd):
                self._check_head(_last_record(fd, self.path))
        except OSError as exc:
            raise AuditError(f"Cannot use the audit log {self.path}: {exc.strerror or exc}.") from exc
        finally:
            os.close(fd)

    def _open(self, flags: int) -> tuple[int, bool]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = not os.path.lexists(self.path)
            fd = os.open(self.path, flags | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0), 0o600)
        except OSError as exc:
            raise AuditError(f"Cannot write the audit log {self.path}: {exc.strerror or exc}.") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AuditError(f"The audit log {self.path} is not a regular file.")
        except BaseException:
            os.close(fd)
            raise
        return fd, new

    def _check_head(self, last: AuditRecord | None) -> None:
        head, error = read_head(self.path)
        reason, _ = head_mismatch(head, error, last.seq if last else 0, last.hash if last else GENESIS)
        if reason:
            raise AuditError(self._mismatch_message(reason))

    def _mismatch_message(self, reason: str) -> str:
        return (f"The audit log {self.path.name} does not match its head: {reason}. Nothing more is recorded "
                "until this is looked at: run 'xmedgpt audit verify', then 'xmedgpt audit repair' to record the "
                "finding in the trail and continue.")

    def _write(self, fd: int, last: AuditRecord | None, action: str, data: dict[str, Any], study_uid: str,
               user: str | None, at: int | None = None) -> AuditRecord:
        """Write the record after ``last``: pending head, the line (appended, or at byte ``at`` with the
        file cut after it), fsync, committed head. The caller holds the lock."""
        rec = AuditRecord(
            seq=last.seq + 1 if last else 1,
            time=utc_now(),
            user=self.user if user is None else user,
            action=action,
            study_uid=study_uid,
            data=data,
            prev=last.hash if last else GENESIS,
        )
        rec = AuditRecord(**{**asdict(rec), "hash": rec.compute_hash()})
        line = rec.to_line().encode("utf-8")
        head = head_path(self.path)
        write_atomic(head, Head(rec.seq, rec.hash, pending=True, prev=rec.prev).to_json())
        if at is None:
            os.write(fd, line)
        else:
            if hasattr(os, "pwrite"):
                os.pwrite(fd, line, at)
            else:  # Windows
                os.lseek(fd, at, os.SEEK_SET)
                os.write(fd, line)
            os.ftruncate(fd, at + len(line))
        os.fsync(fd)
        write_atomic(head, Head(rec.seq, rec.hash).to_json())
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
    if edit.section is not None:
        d["section"] = edit.section
        d["diff"] = text_diff(edit.section_before or "", edit.section_after or "")
        return d
    if edit.addendum_after is not None:  # an addendum to the signed report: started, written, signed
        a = edit.addendum_after
        d.update(addendum_id=a.id, author=a.author, text=a.text,
                 diff=text_diff(edit.addendum_before.text if edit.addendum_before else "", a.text))
        if a.signature is not None:
            d.update(reader_name=a.signature.reader_name, signed_at=a.signature.signed_at)
        return d
    if edit.sentences_after is not None:  # AI impression sentences: decided one by one, or following a finding
        old = {x.id: x for x in edit.sentences_before or ()}
        d["ai_sentences"] = [{"id": x.id, "text": x.text, "status": [old[x.id].status.value if x.id in old else None,
                                                                      x.status.value],
                              **({"caution": x.caution} if x.caution else {})}
                             for x in edit.sentences_after if old.get(x.id) != x]
        if edit.finding_id is None:
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
    with _open_for_reading(Path(path)) as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield n, parse_record(raw), ""
            except ValueError as exc:
                yield n, None, f"the line is not a valid record ({exc})"


def _open_for_reading(path: Path):
    """The log opened for reading if it is a regular file (a FIFO or device could block or never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditError(f"{path} is not a regular file.")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class _Walk:
    """How far the chain is intact: records, the end of the last good line, and where it breaks."""

    count: int = 0
    last_hash: str = GENESIS
    good_end: int = 0  # byte offset after the last intact record's line
    broken_seq: int | None = None
    broken_line: int | None = None
    reason: str = ""
    torn: bool = False  # the break is an unfinished last line (the trace of a crash mid-write)
    repairs: list[AuditRecord] = field(default_factory=list)


def _walk(fh) -> _Walk:
    w = _Walk()
    offset = 0
    for n, raw in enumerate(fh, 1):
        start, offset = offset, offset + len(raw)
        if not raw.strip() and raw.endswith(b"\n"):
            w.good_end = offset if w.good_end == start else w.good_end
            continue
        expected = w.count + 1
        if not raw.endswith(b"\n"):  # only the last line can lack its newline
            w.broken_seq, w.broken_line, w.torn = expected, n, True
            w.reason = ("the last record is unfinished: a write was interrupted (crash or full disk). "
                        "Run 'xmedgpt audit repair' to seal it.")
            return w
        try:
            rec = parse_record(raw)
        except ValueError as exc:
            w.broken_seq, w.broken_line, w.reason = expected, n, f"the line is not a valid record ({exc})"
            return w
        if rec.compute_hash() != rec.hash:
            w.broken_seq, w.broken_line = rec.seq, n
            w.reason = "the record was altered (its hash does not match its content)."
            return w
        if rec.prev != w.last_hash:
            w.broken_seq, w.broken_line = rec.seq, n
            w.reason = "the link to the previous record is broken: a record before it was altered or removed."
            return w
        if rec.seq != expected:
            w.broken_seq, w.broken_line, w.reason = rec.seq, n, f"expected record {expected}, found {rec.seq}."
            return w
        w.count, w.last_hash, w.good_end = rec.seq, rec.hash, offset
        if rec.action == REPAIR_ACTION:
            w.repairs.append(rec)
    return w


def verify(path: Path) -> VerifyResult:
    """Check every link of the chain and the head; the result names the first broken link.

    Never raises for a damaged, missing or odd log or head: that is the result."""
    path = Path(path)
    if not os.path.lexists(path):
        head, error = read_head(path)
        if head is None and error == "missing":
            return VerifyResult(ok=True, notes=["No audit log yet."])
        reason, _ = head_mismatch(head, error, 0, GENESIS)
        if not reason:
            return VerifyResult(ok=True, notes=["No audit log yet."])
        return VerifyResult(False, 0, GENESIS, None, None, f"the audit log is missing, and {reason}.")
    try:
        fh = _open_for_reading(path)
    except (OSError, AuditError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return VerifyResult(False, 0, GENESIS, None, None, f"the audit log cannot be read ({why}).")
    with fh, _locked(fh.fileno(), shared=True):  # a writer finishes its record (and head) first
        try:
            w = _walk(fh)
        except OSError as exc:
            return VerifyResult(False, 0, GENESIS, None, None, f"the audit log cannot be read ({exc.strerror}).")
        head, error = read_head(path)
    if w.broken_seq is not None:
        return VerifyResult(False, w.count, w.last_hash, w.broken_seq, w.broken_line, w.reason)
    result = VerifyResult(True, w.count, w.last_hash)
    result.notes += [_repair_note(r) for r in w.repairs]
    reason, note = head_mismatch(head, error, w.count, w.last_hash)
    if reason:
        return VerifyResult(False, w.count, w.last_hash, None, None, reason[0].upper() + reason[1:] + ".",
                            notes=result.notes)
    if note:
        result.notes.append(note)
    return result


def _repair_note(rec: AuditRecord) -> str:
    summary = rec.data.get("summary") if isinstance(rec.data.get("summary"), str) else "the log was repaired"
    return f"record {rec.seq} is a repair ({rec.time}, by {rec.user or 'unknown'}): {summary}"


# ---- repairing -----------------------------------------------------------------------

@dataclass
class RepairResult:
    record: AuditRecord | None  # the repair record written, None when there was nothing to repair
    side_file: Path | None = None  # where the sealed bytes were kept
    summary: str = ""


def repair(path: Path, user: str | None = None) -> RepairResult:
    """Seal what a crash (or a lost head) left, as a recorded event, so the trail can go on.

    - An unfinished last line is moved to ``<log>.damaged-<UTC time>`` (never deleted) and the
      log ends after the last intact record;
    - a head that does not match the log's end (missing, unreadable, behind, ahead) is noted;
    - then one ``audit.repair`` record says what was sealed (size, SHA-256, side file), what the
      head said and why, and the head is written for it.

    A chain broken anywhere but in its unfinished last line is not the trace of a crash; it is
    not repaired (:class:`AuditError`) so the evidence stays as it is.
    """
    log_ = AuditLog(Path(path), user)
    if not os.path.lexists(log_.path):
        head, error = read_head(log_.path)
        if head is None and error == "missing":
            return RepairResult(None, summary="There is no audit log; nothing to repair.")
    fd, new = log_._open(os.O_RDWR | os.O_CREAT)  # not O_APPEND: the record replaces the damaged tail
    try:
        with _locked(fd):
            with os.fdopen(os.dup(fd), "rb") as fh:
                w = _walk(fh)
            if w.broken_seq is not None and not w.torn:
                raise AuditError(f"The audit log is broken at record {w.broken_seq} (line {w.broken_line}): "
                                 f"{w.reason} That is not the trace of an interrupted write, so it is not repaired; "
                                 "keep the file as it is for investigation.")
            head, error = read_head(log_.path)
            reason, _ = head_mismatch(head, error, w.count, w.last_hash)
            size = os.fstat(fd).st_size
            if not w.torn and not reason:
                return RepairResult(None, summary="The audit log is intact; nothing to repair.")
            data: dict[str, Any] = {"after_seq": w.count, "head_found": head.describe() if head else error,
                                    "head_problem": reason}
            parts, side = [], None
            if w.torn:
                damaged = os.pread(fd, size - w.good_end, w.good_end)
                side = _side_file(log_.path)
                write_atomic(side, damaged)
                data["sealed"] = {"bytes": len(damaged), "sha256": hashlib.sha256(damaged).hexdigest(),
                                  "side_file": side.name, "offset": w.good_end}
                parts.append(f"an unfinished record of {len(damaged)} bytes after record {w.count} was sealed "
                             f"(kept in {side.name}, SHA-256 {data['sealed']['sha256'][:16]}…)")
            if reason:
                parts.append(f"the head did not match the log: {reason}")
            data["summary"] = "; ".join(parts) + "."
            last = _record_at_end(fd, w)
            rec = log_._write(fd, last, REPAIR_ACTION, _plain_data(data), "", None, at=w.good_end)
    except OSError as exc:
        raise AuditError(f"Could not repair the audit log: {exc.strerror or exc}.") from exc
    finally:
        os.close(fd)
    if new:
        fsync_dir(log_.path.parent)
    log.warning("audit log %s repaired: %s", log_.path, data["summary"])
    return RepairResult(rec, side, data["summary"])


def _record_at_end(fd: int, w: _Walk) -> AuditRecord | None:
    """The last intact record (what the repair record follows)."""
    if w.count == 0:
        return None
    return _last_record(fd, None, end=w.good_end)


def _side_file(log_path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 0
    while True:
        side = log_path.with_name(f"{log_path.name}.damaged-{stamp}" + (f"-{n}" if n else ""))
        if not os.path.lexists(side):
            return side
        n += 1


# ---- file helpers ------------------------------------------------------------------

def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry / no login name in containers
        return ""


@contextmanager
def _locked(fd: int, shared: bool = False) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: single-user workstation, one process writes
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _last_record(fd: int, path: Path | None, end: int | None = None) -> AuditRecord | None:
    """The record on the last line before byte ``end`` (default: the end of the file)."""
    size = os.lseek(fd, 0, os.SEEK_END) if end is None else end
    if size == 0:
        return None
    name = path.name if path is not None else "audit log"
    chunk, pos, tail = 65536, size, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
        body = tail.rstrip(b"\n")
        if b"\n" in body or pos == 0:
            break
    if not tail.endswith(b"\n"):
        raise AuditError(f"The audit log {name} ends with an unfinished record (a write was interrupted); "
                         "run 'xmedgpt audit repair' to seal it.")
    line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return parse_record(line)
    except ValueError as exc:
        raise AuditError(f"The last record of the audit log {name} is damaged ({exc}); "
                         "run 'xmedgpt audit verify'.") from exc


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
    head_path(out).unlink(missing_ok=True)  # the head of an earlier export would not match the new chain
    target = AuditLog(out)
    for rec in records:
        data = p.scrub(rec.data)
        data["t_seconds"] = round(_parse_time(rec.time) - t0, 3)
        target.append(rec.action, data, study_uid=p.uid(rec.study_uid) if rec.study_uid else "",
                      user=p.person(rec.user))
    return len(records)


def _parse_time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
