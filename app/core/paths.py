"""Where the workstation keeps its files, and how it writes them safely.

Locations (``AppPaths.detect()``):

==========  ======================================  ====================================
what        Linux / other Unix                      Windows
==========  ======================================  ====================================
config      ``$XDG_CONFIG_HOME/xmedgpt``            ``%APPDATA%\\XMedGPT``
            (default ``~/.config/xmedgpt``)
data        ``$XDG_DATA_HOME/xmedgpt``              ``%LOCALAPPDATA%\\XMedGPT``
            (default ``~/.local/share/xmedgpt``)    (falls back to ``%APPDATA%``)
==========  ======================================  ====================================

macOS uses ``~/Library/Application Support/XMedGPT`` for both. Patient data
(drafts, the audit log) lives under *data*, which on Windows is the local,
non-roaming profile, so it is not copied to a profile server.

``XMEDGPT_HOME`` overrides everything (tests, portable installs): config in
``$XMEDGPT_HOME/config``, data in ``$XMEDGPT_HOME/data``.

Below *data*: ``workspace/`` (autosaved drafts), ``audit/audit.jsonl`` (the
audit trail), ``models/`` (model folders the reader added).

:func:`write_atomic` is the one way files that must survive a crash are written:
temp file in the same folder, fsync, rename over the target, fsync the folder. A
crash between the first and the last step leaves the temp file (``.<name>.XXXXXXXX.tmp``)
behind; the next write of the same target removes such orphans once they are older
than :data:`STALE_TEMP_SECONDS` (younger ones may belong to a writer still at work),
and :func:`clean_stale_temps` does the same for a whole folder at start-up.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

APP_DIR_UNIX = "xmedgpt"
APP_DIR_WINDOWS = "XMedGPT"
HOME_ENV = "XMEDGPT_HOME"


@dataclass(frozen=True)
class AppPaths:
    """The application's folders. Nothing is created until :meth:`ensure` is called."""

    config: Path
    data: Path

    @property
    def settings_file(self) -> Path:
        return self.config / "settings.json"

    @property
    def workspace(self) -> Path:
        return self.data / "workspace"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def audit_log(self) -> Path:
        return self.data / "audit" / "audit.jsonl"

    def ensure(self) -> "AppPaths":
        """Create the folders (owner-only where the platform honours modes)."""
        for d in (self.config, self.data, self.workspace, self.models, self.audit_log.parent):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None, platform: str | None = None) -> "AppPaths":
        """The folders for this user on this platform (``env``/``platform`` for tests)."""
        env = os.environ if env is None else env
        platform = sys.platform if platform is None else platform
        home_override = env.get(HOME_ENV, "").strip()
        if home_override:
            root = Path(home_override).expanduser()
            return cls(config=root / "config", data=root / "data")
        user_home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
        if platform.startswith("win"):
            roaming = Path(env["APPDATA"]) if env.get("APPDATA") else user_home / "AppData" / "Roaming"
            local = Path(env["LOCALAPPDATA"]) if env.get("LOCALAPPDATA") else roaming
            return cls(config=roaming / APP_DIR_WINDOWS, data=local / APP_DIR_WINDOWS)
        if platform == "darwin":
            base = user_home / "Library" / "Application Support" / APP_DIR_WINDOWS
            return cls(config=base, data=base)
        config_home = _absolute_or_none(env.get("XDG_CONFIG_HOME")) or user_home / ".config"
        data_home = _absolute_or_none(env.get("XDG_DATA_HOME")) or user_home / ".local" / "share"
        return cls(config=config_home / APP_DIR_UNIX, data=data_home / APP_DIR_UNIX)


def _absolute_or_none(value: str | None) -> Path | None:
    # The XDG spec: relative paths in these variables are invalid and must be ignored.
    if value and Path(value).is_absolute():
        return Path(value)
    return None


def app_paths() -> AppPaths:
    """The folders for the current process environment."""
    return AppPaths.detect()


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (no-op where unsupported)."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Temp files of interrupted atomic writes older than this are removed (an hour: no write takes that long).
STALE_TEMP_SECONDS = 3600.0
# tempfile.mkstemp names: prefix, 8 characters from [a-z0-9_], suffix
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def clean_stale_temps(folder: Path, target: str | None = None, *,
                      older_than: float = STALE_TEMP_SECONDS, now: float | None = None) -> list[Path]:
    """Remove temp files that interrupted :func:`write_atomic` calls left in ``folder`` (only those of
    ``target`` when given) and that are older than ``older_than`` seconds; returns what was removed.
    Never raises: cleaning up is a courtesy, not a reason to fail a write."""
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or (target is not None and m.group("target") != target):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or now - st.st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
        log.info("removed %s, left by an interrupted write", entry.name)
    return removed


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file, never half.

    Temp file in the same folder → write → fsync → rename over ``path`` → fsync the folder.
    Orphaned temp files of earlier interrupted writes of ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def set_aside(path: Path, reason: str) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<n>`` beside it (never delete it); return the new path.

    Logs one warning line. When the rename itself fails (a read-only folder), the file stays
    where it is, that is logged, and ``path`` is returned: the caller goes on with defaults.
    """
    path = Path(path)
    n = 1
    while True:
        target = path.with_name(f"{path.name}.corrupt-{n}")
        if not os.path.lexists(target):
            break
        n += 1
    try:
        os.replace(path, target)
    except OSError as exc:
        log.warning("%s is damaged (%s) and could not be set aside: %s", path, reason, exc.strerror or exc)
        return path
    try:
        fsync_dir(path.parent)
    except OSError:
        pass
    log.warning("set aside %s as %s: %s", path, target.name, reason)
    return target


#: Owner-only modes for patient data: files 0600, folders 0700 (where the platform honours modes).
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700


def write_private(path: Path, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write a patient-data file (an export: SR, PDF, text) owner-only, atomically; return ``path``.

    Folders it has to create are made 0700 (existing ones are left alone: they may be the
    reader's); the file is 0600 from its creation on. ``data`` is the content, or a function
    that writes the file at the path it is given (pydicom's ``save_as``, Qt's PDF writer): it
    writes a temp file beside ``path`` (named as :func:`write_atomic` names its own), renamed
    over ``path`` once complete.
    """
    path = Path(path)
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    if not callable(data):
        write_atomic(path, data, mode=PRIVATE_FILE)
        return path
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        data(tmp)
        os.chmod(tmp, PRIVATE_FILE)  # a writer that replaced the file may have used the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
