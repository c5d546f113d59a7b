"""Autosaved drafts: a snapshot per study plus an append-only journal of edits.

Layout under the workspace folder, keyed by StudyInstanceUID::

    <study uid>.json      the last snapshot (written atomically: temp, fsync, rename, fsync dir)
    <study uid>.json.prev the snapshot before it (a hard link kept when a new one is written)
    <study uid>.journal   one JSON line per edit since that snapshot, fsynced as it is written

Every edit is appended to the journal at once (a few milliseconds), and the
snapshot is rewritten every ``snapshot_seconds`` (then the journal starts over).
After a crash or ``kill -9`` the draft is the snapshot with the journal replayed
on top: at most the edit being written is lost. A journal line cut short by the
crash is expected and skipped.

Snapshots and journal lines are read with every field's type checked
(:mod:`app.report.serialize`, :mod:`app.core.strict_json`): a file that is not
JSON, holds ``NaN``, is nested absurdly deep, has a field of the wrong type, is not
a regular file, or a journal line whose checksum is right but whose edit is not,
never raises. The file is set aside as ``*.corrupt-N`` beside it (never deleted),
one warning is logged, the problem is reported in :attr:`Restored.problems`, and the
study opens with the last good state there is: the previous snapshot when the
current one is damaged, plus the readable journal edits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.core import strict_json
from app.core.errors import XMedError
from app.core.paths import clean_stale_temps, fsync_dir, set_aside, write_atomic
from app.report.draft import DraftReport, Edit
from app.report.serialize import (
    edit_from_dict,
    edit_to_dict,
    report_from_dict,
    report_to_dict,
)

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
MAX_JOURNAL_BYTES = 256 * 1024 * 1024
#: Errors a damaged or hostile file can cause while it is read; each means "set it aside".
_DAMAGE = (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)


class WorkspaceError(XMedError):
    """The workspace folder cannot be used (permissions, disk full)."""


@dataclass
class Restored:
    report: DraftReport | None
    problems: list[str] = field(default_factory=list)
    replayed: int = 0  # journal edits applied on top of the snapshot


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise WorkspaceError(f"Cannot use the workspace folder {self.root}: {exc.strerror}.") from exc
        if not self.root.is_dir():
            raise WorkspaceError(f"Cannot use the workspace folder {self.root}: it is not a folder.")
        clean_stale_temps(self.root)  # temp files of snapshots a crash interrupted

    # ---- names ------------------------------------------------------------------
    def _stem(self, study_uid: str) -> str:
        if _UID.match(study_uid) and len(study_uid) <= 64:
            return study_uid
        # not a valid UID (anonymised or broken data): a stable, file-system-safe name
        return "x-" + hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:32]

    def snapshot_path(self, study_uid: str) -> Path:
        return self.root / f"{self._stem(study_uid)}.json"

    def journal_path(self, study_uid: str) -> Path:
        return self.root / f"{self._stem(study_uid)}.journal"

    def previous_snapshot_path(self, study_uid: str) -> Path:
        return self.root / f"{self._stem(study_uid)}.json.prev"

    def studies(self) -> list[str]:
        """Study UIDs with a saved draft (from the snapshots' contents)."""
        out = []
        for p in sorted(self.root.glob("*.json")):
            try:
                data = strict_json.read_file(p, max_bytes=MAX_SNAPSHOT_BYTES)
                uid = data["study"]["study_uid"]
                if not isinstance(uid, str):
                    raise TypeError("study_uid is not text")
                out.append(uid)
            except _DAMAGE:
                log.warning("unreadable draft %s", p)
        return out

    # ---- writing ----------------------------------------------------------------
    def save(self, report: DraftReport) -> None:
        """Write the snapshot atomically, then start the journal over."""
        uid = report.study.study_uid
        try:
            snapshot = self.snapshot_path(uid)
            self._keep_previous(snapshot, self.previous_snapshot_path(uid))
            write_atomic(snapshot, json.dumps(report_to_dict(report), ensure_ascii=False, indent=1))
            journal = self.journal_path(uid)
            if journal.exists():
                # Lines up to this revision are now in the snapshot; replay skips them anyway,
                # so a crash between the two steps loses nothing.
                write_atomic(journal, b"")
        except OSError as exc:
            raise WorkspaceError(f"Could not save the draft report: {exc.strerror}.") from exc

    @staticmethod
    def _keep_previous(snapshot: Path, previous: Path) -> None:
        """Keep the current snapshot as ``previous`` (a hard link: no copy) before it is replaced.

        Best effort: on a file system without hard links there is simply no previous snapshot."""
        if not snapshot.is_file():
            return
        # named like write_atomic's temp files, so one a crash leaves behind is cleaned up the same way
        tmp = previous.with_name(f".{previous.name}.{os.getpid() % 10**8:08d}.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.link(snapshot, tmp)
            os.replace(tmp, previous)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.debug("no previous snapshot kept for %s: %s", snapshot.name, exc)

    def append(self, report: DraftReport, edit: Edit) -> None:
        """Add one edit to the study's journal and make it durable before returning."""
        body = json.dumps(edit_to_dict(edit), ensure_ascii=False, sort_keys=True)
        line = json.dumps({"sha256": _digest(body), "edit": json.loads(body)}, ensure_ascii=False) + "\n"
        path = self.journal_path(report.study.study_uid)
        new = not path.exists()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.root)
        except OSError as exc:
            raise WorkspaceError(f"Could not record the edit in the workspace: {exc.strerror}.") from exc

    def exports_dir(self, study_uid: str) -> Path:
        """Where the study's exported documents are kept (draft SRs are referenced when the report is signed)."""
        return self.root / "exports" / self._stem(study_uid)

    def latest_draft_srs(self, study_uid: str) -> list[Path]:
        """The newest draft measurement and narrative SR exported for this study (what a signed SR replaces)."""
        d = self.exports_dir(study_uid)
        out = []
        for kind in ("measurements", "report"):
            found = sorted(d.glob(f"SR-draft-{kind}-*.dcm"), key=lambda p: p.stat().st_mtime_ns) if d.is_dir() else []
            out += found[-1:]
        return out

    def discard(self, study_uid: str) -> None:
        for p in (self.snapshot_path(study_uid), self.previous_snapshot_path(study_uid),
                  self.journal_path(study_uid)):
            p.unlink(missing_ok=True)
        fsync_dir(self.root)

    # ---- reading ----------------------------------------------------------------
    def load(self, study_uid: str) -> Restored:
        """The study's draft as it was at the last recorded edit (or None), with any problems found.

        Never raises for a damaged file: it is set aside and the problem reported."""
        result = Restored(None)
        snap = self.snapshot_path(study_uid)
        if os.path.lexists(snap):
            result.report, why = self._read_snapshot(snap, study_uid)
            if result.report is None:
                moved = set_aside(snap, why)
                result.problems.append(
                    f"The saved draft for this study could not be read and was kept as {moved.name}."
                )
                result.report = self._previous(study_uid, result)
        journal = self.journal_path(study_uid)
        if os.path.lexists(journal):
            self._replay(journal, result)
        return result

    def _read_snapshot(self, path: Path, study_uid: str) -> tuple[DraftReport | None, str]:
        try:
            report = report_from_dict(strict_json.read_file(path, max_bytes=MAX_SNAPSHOT_BYTES))
            if report.study.study_uid != study_uid:
                raise ValueError("it belongs to another study")
            return report, ""
        except _DAMAGE as exc:
            return None, f"{exc.__class__.__name__}: {exc}"[:300]

    def _previous(self, study_uid: str, result: Restored) -> DraftReport | None:
        """The snapshot before the damaged one, if there is a readable one."""
        prev = self.previous_snapshot_path(study_uid)
        if not os.path.lexists(prev):
            return None
        report, why = self._read_snapshot(prev, study_uid)
        if report is None:
            moved = set_aside(prev, why)
            result.problems.append(f"The previous saved draft could not be read either; it was kept as {moved.name}.")
            return None
        result.problems.append(
            "The previous saved draft was restored instead; changes made after it may be missing."
        )
        return report

    def _replay(self, journal: Path, result: Restored) -> None:
        try:
            raw = strict_json.read_regular(journal, MAX_JOURNAL_BYTES)
        except _DAMAGE as exc:
            moved = set_aside(journal, f"unreadable: {exc}")
            result.problems.append(f"The edit journal for this study could not be read; it was kept as {moved.name}.")
            return
        lines = raw.split(b"\n")
        torn_tail = bool(lines and lines[-1])  # the last write did not finish
        bad: list[int] = []
        why = ""
        edits: list[Edit] = []
        good: list[bytes] = []
        for n, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                edits.append(_edit_of_line(line))
                good.append(line + b"\n")
            except _DAMAGE as exc:
                if torn_tail and n == len(lines):
                    log.info("journal %s: last edit was cut short by a crash; skipped", journal.name)
                    continue
                bad.append(n)
                why = why or f"{exc.__class__.__name__}: {exc}"[:200]
        moved: Path | None = None
        if bad:
            where = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
            moved = set_aside(journal, f"unreadable line(s) {where} (first: {why})")
            result.problems.append(
                f"Part of the edit journal for this study was damaged; the original was kept as {moved.name}"
                + ("." if result.report is None else " and the readable edits were restored.")
            )
        report = result.report
        if report is None:
            if edits:
                kept = moved if moved is not None else set_aside(journal, "no snapshot to replay onto")
                result.problems.append(
                    f"Edits were found without a readable draft to apply them to; they were kept as {kept.name}."
                )
            return
        if bad or torn_tail:
            # keep the readable part in place so later appends continue a clean journal
            write_atomic(journal, b"".join(good))
        for e in edits:
            if e.revision > report.revision:
                try:
                    report.replay(e)
                except _DAMAGE as exc:  # an edit that does not fit this report: reported, not fatal
                    log.warning("journal %s: edit %d not replayed: %s", journal.name, e.revision, exc)
                    continue
                result.replayed += 1


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _edit_of_line(line: bytes) -> Edit:
    """One journal line as an edit: its checksum must match and the edit must be well-formed."""
    rec = strict_json.expect_object(strict_json.loads(line), "the journal line")
    edit = strict_json.expect_object(rec.get("edit"), "'edit'")
    checksum = rec.get("sha256")
    if not isinstance(checksum, str) or checksum != _digest(json.dumps(edit, ensure_ascii=False, sort_keys=True)):
        raise ValueError("checksum mismatch")
    return edit_from_dict(edit)


class Autosave:
    """Keeps one report saved: every edit journaled at once, a fresh snapshot every ``snapshot_seconds``.

    ``attach`` writes the first snapshot; the UI may call :meth:`tick` from a timer
    and must call :meth:`close` when the study closes.
    """

    def __init__(
        self,
        workspace: Workspace,
        report: DraftReport,
        snapshot_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[XMedError], None] | None = None,
    ) -> None:
        self.workspace = workspace
        self.report = report
        self.snapshot_seconds = snapshot_seconds
        self._clock = clock
        self._on_error = on_error
        self._dirty = False
        self._last_snapshot = clock()
        workspace.save(report)
        self._unsubscribe = report.subscribe(self._on_edit)

    def _on_edit(self, report: DraftReport, edit: Edit) -> None:
        try:
            self.workspace.append(report, edit)
            self._dirty = True
            self.tick()
        except XMedError as exc:
            if self._on_error is None:
                raise
            self._on_error(exc)

    def tick(self) -> bool:
        """Write a snapshot if edits are waiting and the interval has passed; True if one was written."""
        if self._dirty and self._clock() - self._last_snapshot >= self.snapshot_seconds:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        self.workspace.save(self.report)
        self._dirty = False
        self._last_snapshot = self._clock()

    def close(self) -> None:
        self._unsubscribe()
        self.flush()


def restore_or_new(workspace: Workspace, study_uid: str, make: Callable[[], DraftReport]) -> tuple[DraftReport, list[str]]:
    """The saved draft for a study if there is one, else ``make()``; plus problems to show the reader."""
    restored = workspace.load(study_uid)
    if restored.report is not None:
        return restored.report, restored.problems
    return make(), restored.problems

