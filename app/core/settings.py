"""The reader's settings: one JSON file at the platform location (see :mod:`app.core.paths`).

``Settings.load()`` never fails on a bad file. A file that cannot be read as a
settings object (not JSON, ``NaN``/``Infinity``, nested absurdly deep, not an
object, a device or FIFO, too big) is set aside as ``settings.json.corrupt-N`` and
defaults are used. Each field is checked against its type and a sane range
(:data:`RANGES`, :data:`CHOICES`; paths must not name the wrong kind of thing, e.g.
an audit log that is a folder); a bad field falls back to its default. Either way
the problem is logged as a warning and kept in ``Settings.problems`` so the UI can
tell the reader. Keys this version does not know (written by a newer version, or by
hand) are kept in ``extra`` and written back on save.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from app.core import strict_json
from app.core.paths import AppPaths, set_aside, write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_SETTINGS_BYTES = 1024 * 1024

#: Allowed ranges of the numeric settings (inclusive); the Settings dialog offers the same.
RANGES: dict[str, tuple[float, float]] = {
    "reliability_samples": (1, 50),
    "reliability_questions": (1, 10),
    "autosave_seconds": (0.2, 600.0),
    "preread_quiet_seconds": (1.0, 3600.0),
}
#: Settings that take one of a few words.
CHOICES: dict[str, frozenset[str]] = {
    "quantization": frozenset({"auto", "nf4", "int8", "bf16", "none"}),
    "report_send_via": frozenset({"dimse", "dicomweb"}),
}
#: Longest accepted text per setting (paths, names, keys).
MAX_TEXT: dict[str, int] = {"dictation_key": 64, "dictation_language": 16}
DEFAULT_MAX_TEXT = 4096
#: Path settings: what the path must be when it exists ("dir" or "file").
PATH_KINDS: dict[str, str] = {"workspace_dir": "dir", "audit_log": "file", "model_dir": "dir",
                              "dictation_model": "dir"}


@dataclass
class Settings:
    """Everything the reader can change. Empty path strings mean "the default location"."""

    # who signs
    reader_name: str = ""  # as it appears on the signed report, e.g. "Smith^Jane" or "Dr Jane Smith"
    institution_name: str = ""
    department_name: str = ""
    # the model
    model_dir: str = ""  # empty: the embedded demo model (resources/models/demo)
    remote_url: str = ""  # an OpenAI-compatible server; empty: run locally
    remote_model: str = ""
    use_gpu: bool = True
    quantization: str = "auto"  # auto (NF4 on CUDA, full precision on CPU), nf4, int8, bf16, none
    # dictation
    dictation_device: str = ""  # sounddevice input name; empty: the system default
    dictation_key: str = "F4"  # push-to-talk key
    dictation_model: str = ""  # Whisper model folder; empty: the bundled one
    dictation_language: str = "en"
    dictation_auto_ask: bool = False  # dictated text in the query box is asked at once
    spoken_query_audio: bool = True  # a model that can hear gets spoken queries as audio (else Whisper)
    # reliability
    reliability_samples: int = 5  # N answers sampled per question
    reliability_questions: int = 5  # attribute-level questions per draft
    # files
    workspace_dir: str = ""  # empty: <data>/workspace
    audit_log: str = ""  # empty: <data>/audit/audit.jsonl
    autosave_seconds: float = 2.0
    # hospital connectivity (app/studies)
    report_send_node: str = ""  # PACS node (``xmedgpt pacs nodes``) that signed SR + PDF go to; empty: stay local
    report_send_via: str = "dimse"  # dimse (C-STORE) or dicomweb (STOW-RS, the node needs a DICOMweb URL)
    pacs_listen: bool = False  # the viewer runs the Storage SCP (this workstation's AE) while it is open
    preread_on_arrival: bool = False  # the viewer pre-reads each study that arrives, in the background
    preread_quiet_seconds: float = 30.0  # a received study is complete after this long without a new image

    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    problems: list[str] = field(default_factory=list, repr=False, compare=False)
    path: Path | None = field(default=None, repr=False, compare=False)

    _NOT_SAVED: ClassVar[frozenset[str]] = frozenset({"extra", "problems", "path"})

    # ---- resolved locations -------------------------------------------------------
    def workspace_path(self, paths: AppPaths | None = None) -> Path:
        return Path(self.workspace_dir).expanduser() if self.workspace_dir else (paths or AppPaths.detect()).workspace

    def audit_log_path(self, paths: AppPaths | None = None) -> Path:
        return Path(self.audit_log).expanduser() if self.audit_log else (paths or AppPaths.detect()).audit_log

    def model_path(self) -> Path | None:
        return Path(self.model_dir).expanduser() if self.model_dir else None

    # ---- file I/O -------------------------------------------------------------------
    @classmethod
    def fields_saved(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in cls._NOT_SAVED]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in self.fields_saved()})
        out["schema_version"] = SCHEMA_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        settings = cls()
        known = {f.name: f for f in cls.fields_saved()}
        for key, value in data.items():
            if key == "schema_version":
                continue
            f = known.get(key)
            if f is None:
                settings.extra[key] = value
                continue
            default = getattr(settings, key)
            coerced, why = _check(key, value, default)
            if why:
                shown = repr(value)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                settings.problems.append(
                    f"Setting '{key}' has an unusable value ({shown}: {why}); using the default ({default!r})."
                )
                continue
            setattr(settings, key, coerced)
        return settings

    @classmethod
    def load(cls, path: Path | None = None) -> "Settings":
        """Read the settings file; missing → defaults; damaged → set aside, defaults, and a problem noted."""
        path = Path(path) if path else AppPaths.detect().settings_file
        if not path.exists() and not path.is_symlink():
            settings = cls()
        else:
            try:
                data = strict_json.read_file(path, max_bytes=MAX_SETTINGS_BYTES)
                if not isinstance(data, dict):
                    raise ValueError("the file does not hold a settings object")
            except (OSError, ValueError) as exc:
                moved = set_aside(path, str(exc) or exc.__class__.__name__)
                settings = cls()
                settings.problems.append(
                    f"The settings file was damaged and has been kept as {moved.name}; default settings are in use."
                )
            else:
                settings = cls.from_dict(data)
        settings.path = path
        for problem in settings.problems:
            log.warning("%s", problem)
        return settings

    def save(self, path: Path | None = None) -> Path:
        path = Path(path) if path else (self.path or AppPaths.detect().settings_file)
        write_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        self.path = path
        return path


def _check(key: str, value: Any, default: Any) -> tuple[Any, str]:
    """``(value as the type of default, "")`` or ``(None, why it cannot be used)``."""
    if isinstance(default, bool):
        return (value, "") if isinstance(value, bool) else (None, "not true or false")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, "not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return None, "not a finite number"
        if isinstance(default, int) and value != int(value):
            return None, "not a whole number"
        lo, hi = RANGES.get(key, (1, 1_000_000))
        if not lo <= value <= hi:
            return None, f"outside {lo:g} to {hi:g}"
        return (int(value) if isinstance(default, int) else float(value)), ""
    if isinstance(default, str):
        if not isinstance(value, str):
            return None, "not text"
        if len(value) > MAX_TEXT.get(key, DEFAULT_MAX_TEXT):
            return None, "too long"
        if "\x00" in value:
            return None, "contains a NUL character"
        if key in CHOICES and value not in CHOICES[key]:
            return None, f"not one of {', '.join(sorted(CHOICES[key]))}"
        kind = PATH_KINDS.get(key)
        if kind and value:
            try:
                p = Path(value).expanduser()
                if kind == "dir" and p.exists() and not p.is_dir():
                    return None, "names a file, not a folder"
                if kind == "file" and p.is_dir():
                    return None, "names a folder, not a file"
            except (OSError, RuntimeError, ValueError):
                return None, "not a usable path"
        return value, ""
    return value, ""
