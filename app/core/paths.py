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
temp file in the same folder, fsync, rename over the target, fsync the folder.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Mapping
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


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file, never half.

    Temp file in the same folder → write → fsync → rename over ``path`` → fsync the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    """Rename a damaged file to ``<name>.corrupt-<n>`` beside it (never delete it); return the new path."""
    path = Path(path)
    n = 1
    while True:
        target = path.with_name(f"{path.name}.corrupt-{n}")
        if not target.exists():
            break
        n += 1
    os.replace(path, target)
    fsync_dir(path.parent)
    log.warning("set aside %s as %s: %s", path, target.name, reason)
    return target
