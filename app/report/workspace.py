"""Autosaved drafts: a snapshot per study plus an append-only journal of edits.

Layout under the workspace folder, keyed by StudyInstanceUID::

    <study uid>.json      the last snapshot (written atomically: temp, fsync, rename, fsync dir)
    <study uid>.journal   one JSON line per edit since that snapshot, fsynced as it is written

Every edit is appended to the journal at once (a few milliseconds), and the
snapshot is rewritten every ``snapshot_seconds`` (then the journal starts over).
After a crash or ``kill -9`` the draft is the snapshot with the journal replayed
on top: at most the edit being written is lost. A journal line cut short by the
crash is expected and skipped; any other damage, and a snapshot that cannot be
read, is reported in :attr:`Restored.problems` and the file is set aside as
``*.corrupt-N`` beside it, never deleted.
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

from app.core.errors import XMedError
from app.core.paths import fsync_dir, set_aside, write_atomic
from app.report.draft import DraftReport, Edit
from app.report.serialize import (
    edit_from_dict,
    edit_to_dict,
    report_from_dict,
    report_to_dict,
)

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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

    def studies(self) -> list[str]:
        """Study UIDs with a saved draft (from the snapshots' contents)."""
        out = []
        for p in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8"))["study"]["study_uid"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable draft %s", p)
        return out

    # ---- writing ----------------------------------------------------------------
    def save(self, report: DraftReport) -> None:
        """Write the snapshot atomically, then start the journal over."""
        uid = report.study.study_uid
        try:
            write_atomic(self.snapshot_path(uid), json.dumps(report_to_dict(report), ensure_ascii=False, indent=1))
            journal = self.journal_path(uid)
            if journal.exists():
                # Lines up to this revision are now in the snapshot; replay skips them anyway,
                # so a crash between the two steps loses nothing.
                write_atomic(journal, b"")
        except OSError as exc:
            raise WorkspaceError(f"Could not save the draft report: {exc.strerror}.") from exc

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
        for p in (self.snapshot_path(study_uid), self.journal_path(study_uid)):
            p.unlink(missing_ok=True)
        fsync_dir(self.root)

    # ---- reading ----------------------------------------------------------------
    def load(self, study_uid: str) -> Restored:
        """The study's draft as it was at the last recorded edit (or None), with any problems found."""
        result = Restored(None)
        snap = self.snapshot_path(study_uid)
        if snap.exists():
            try:
                result.report = report_from_dict(json.loads(snap.read_text(encoding="utf-8")))
                if result.report.study.study_uid != study_uid:
                    raise ValueError("it belongs to another study")
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                moved = set_aside(snap, str(exc))
                result.report = None
                result.problems.append(
                    f"The saved draft for this study could not be read and was kept as {moved.name}."
                )
        journal = self.journal_path(study_uid)
        if journal.exists():
            self._replay(journal, result)
        return result

    def _replay(self, journal: Path, result: Restored) -> None:
        raw = journal.read_bytes()
        lines = raw.split(b"\n")
        torn_tail = bool(lines and lines[-1])  # the last write did not finish
        damaged = False
        edits: list[Edit] = []
        for n, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                rec = json.loads(line)
                body = json.dumps(rec["edit"], ensure_ascii=False, sort_keys=True)
                if rec["sha256"] != _digest(body):
                    raise ValueError("checksum mismatch")
                edits.append(edit_from_dict(rec["edit"]))
            except (ValueError, KeyError, TypeError) as exc:
                if torn_tail and n == len(lines):
                    log.info("journal %s: last edit was cut short by a crash; skipped", journal.name)
                    continue
                damaged = True
                log.warning("journal %s line %d unreadable: %s", journal.name, n, exc)
        good = b"".join(line + b"\n" for line in lines if line and _readable(line))
        if damaged:
            moved = set_aside(journal, "unreadable lines")
            result.problems.append(
                f"Part of the edit journal for this study was damaged; the original was kept as {moved.name}"
                + ("." if result.report is None else " and the readable edits were restored.")
            )
        report = result.report
        if report is None:
            if edits:
                kept = set_aside(journal, "no snapshot to replay onto").name if journal.exists() else moved.name
                result.problems.append(
                    f"Edits were found without a readable draft to apply them to; they were kept as {kept}."
                )
            return
        if damaged or torn_tail:
            # keep the readable part in place so later appends continue a clean journal
            write_atomic(journal, good)
        for e in edits:
            if e.revision > report.revision:
                report.replay(e)
                result.replayed += 1


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _readable(line: bytes) -> bool:
    try:
        rec = json.loads(line)
        return rec["sha256"] == _digest(json.dumps(rec["edit"], ensure_ascii=False, sort_keys=True))
    except (ValueError, KeyError, TypeError):
        return False


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

