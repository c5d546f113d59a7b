"""Model folders the workstation knows: check, register, choose the default.

``xmedgpt models add DIR`` checks a folder before it is used (:func:`check_model_folder`,
the one check also behind the Settings dialog and every ``--model DIR``; the rules are in
:mod:`app.models.schema`): the files must be regular files inside the folder, the config
readable with the expected types, the architecture supported (native transformers
InternVL) or convertible (original InternVL2 ``internvl_chat``, XMedGPT's own format,
which ``xmedgpt convert-checkpoint`` turns into the native one), the weights in a format
that loads; the weights' size and SHA-256 are recorded so every AI output in the audit
trail and in DICOM SR can name the exact weights that produced it.
:func:`weights_sha256` gives the same digest for any checked folder (registered or
not, e.g. the embedded demo model), cached by file path, size and modification time.

The registry is a JSON file under the data folder (``<data>/models/registry.json``),
written atomically and read with every field checked: a file that cannot be read is
set aside (``registry.json.corrupt-N``) and the list starts empty; entries that are
damaged are dropped from the list after the original is set aside. Folders are
referenced where they are, never copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.core import strict_json
from app.core.paths import AppPaths, set_aside, write_atomic
from app.models.schema import (
    CONVERTIBLE_ARCHITECTURES,
    CONVERTIBLE_MODEL_TYPES,
    NATIVE_ARCHITECTURES,
    WEIGHT_SUFFIXES,
    ModelFolderError,
    checked_files,
    config_format,
    read_config,
    weight_files,
)

log = logging.getLogger(__name__)

__all__ = [
    "CONVERTIBLE_ARCHITECTURES", "CONVERTIBLE_MODEL_TYPES", "NATIVE_ARCHITECTURES", "WEIGHT_SUFFIXES",
    "ModelFolder", "ModelFolderError", "ModelInfo", "ModelRegistry", "check_model_folder", "describe_size",
    "file_sha256", "inspect_model_folder", "require_native_model_folder", "weights_digest", "weights_sha256",
]

MAX_REGISTRY_BYTES = 16 * 1024 * 1024
MAX_CACHE_BYTES = 16 * 1024 * 1024
MAX_CACHE_ENTRIES = 2000
FORMATS = frozenset({"native", "internvl_chat"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ModelInfo:
    name: str
    path: str
    format: str  # "native" or "internvl_chat" (needs conversion)
    architecture: str
    model_type: str
    size_bytes: int
    weights_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # weight file → SHA-256
    added: str = ""

    @property
    def needs_conversion(self) -> bool:
        return self.format != "native"


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a regular file (a device or FIFO is refused: it could never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelFolderError(f"{path} is not a regular file.")
        h = hashlib.sha256()
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_digest(files: dict[str, str]) -> str:
    """One SHA-256 for a set of weight files: over the sorted ``name:sha256`` lines."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name]}\n".encode())
    return h.hexdigest()


@dataclass
class ModelFolder:
    """What a model folder's config says and where its weights are (checked, not hashed)."""

    path: Path
    format: str  # "native" or "internvl_chat"
    architecture: str
    model_type: str
    weights: list[Path]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weights)


def check_model_folder(folder: Path) -> ModelFolder:
    """Check ``folder`` (files, config, weights; see :mod:`app.models.schema`) without hashing;
    :class:`ModelFolderError` with the reason."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelFolderError(f"The model folder {folder} does not exist.")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is a file; choose the folder that holds config.json and the weights.")
    files = checked_files(folder)
    if "config.json" not in files:
        raise ModelFolderError(f"{folder} is not a model folder: it has no config.json.")
    fmt, architecture, model_type = config_format(read_config(folder), folder)
    weights = weight_files(folder, fmt, files)
    return ModelFolder(folder, fmt, architecture, model_type, [folder / n for n in weights])


def require_native_model_folder(folder: Path) -> ModelFolder:
    """:func:`check_model_folder`, and the folder must be in the native format the engine loads
    (an original checkpoint is refused with the command that converts it). For ``--model DIR``."""
    checked = check_model_folder(folder)
    if checked.format != "native":
        raise ModelFolderError(
            f"{checked.path} is an original InternVL2/XMedGPT checkpoint; convert it first: "
            f"xmedgpt convert-checkpoint {checked.path} {checked.path}-native")
    return checked


def inspect_model_folder(folder: Path, name: str | None = None,
                         progress: Callable[[str], None] | None = None) -> ModelInfo:
    """Check ``folder`` and describe it with the weights' SHA-256 (for the registry and the audit trail).

    The weights are hashed afresh (registering must not trust a cache); the cache is updated."""
    checked = check_model_folder(folder)
    files: dict[str, str] = {}
    cache = _DigestCache.open()
    for p in checked.weights:
        rel = p.relative_to(checked.path).as_posix()
        if progress:
            progress(f"hashing {rel}")
        try:
            files[rel] = file_sha256(p)
            cache.put(p, files[rel])
        except OSError as exc:
            raise ModelFolderError(f"The weight file {rel} in {checked.path} cannot be read "
                                   f"({exc.strerror or exc}).") from exc
    cache.save()
    return ModelInfo(
        name=name or checked.path.name,
        path=str(checked.path.resolve()),
        format=checked.format,
        architecture=checked.architecture,
        model_type=checked.model_type,
        size_bytes=checked.size_bytes,
        weights_sha256=weights_digest(files),
        files=files,
        added=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def weights_sha256(folder: Path | ModelFolder, cache_path: Path | None = None) -> str:
    """The weights digest of a model folder (as ``models add`` records it), for the audit trail.

    Each weight file's SHA-256 is cached by its resolved path, size and modification time
    (``<data>/models/weights-sha256.json``), so a multi-gigabyte model is hashed once."""
    checked = folder if isinstance(folder, ModelFolder) else check_model_folder(folder)
    cache = _DigestCache.open(cache_path)
    files = {p.relative_to(checked.path).as_posix(): cache.get_or_hash(p) for p in checked.weights}
    cache.save()
    return weights_digest(files)


class _DigestCache:
    """Resolved file path → (size, mtime_ns, sha256), kept in a small JSON file; a damaged one is set aside."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.entries = entries
        self.dirty = False

    @classmethod
    def open(cls, path: Path | None = None) -> "_DigestCache":
        path = Path(path) if path else AppPaths.detect().models / "weights-sha256.json"
        entries: dict[str, dict[str, Any]] = {}
        if os.path.lexists(path):
            try:
                data = strict_json.expect_object(strict_json.read_file(path, max_bytes=MAX_CACHE_BYTES), "the cache")
                raw = strict_json.expect_object(data.get("files", {}), "'files'")
                for key, e in raw.items():
                    e = strict_json.expect_object(e, f"'files.{key}'")
                    strict_json.expect_int(e, "size", lo=0)
                    strict_json.expect_int(e, "mtime_ns")
                    if not _HEX64.match(strict_json.expect_str(e, "sha256", max_len=64)):
                        raise strict_json.InvalidJson("not a SHA-256")
                    entries[key] = e
            except (OSError, ValueError) as exc:
                set_aside(path, str(exc))
                entries = {}
        return cls(path, entries)

    @staticmethod
    def _key(p: Path) -> tuple[str, int, int]:
        target = p.resolve()
        st = os.stat(target)
        return str(target), st.st_size, st.st_mtime_ns

    def get_or_hash(self, p: Path) -> str:
        key, size, mtime = self._key(p)
        e = self.entries.get(key)
        if e is not None and e["size"] == size and e["mtime_ns"] == mtime:
            return e["sha256"]
        digest = file_sha256(p)
        self.put(p, digest)
        return digest

    def put(self, p: Path, digest: str) -> None:
        key, size, mtime = self._key(p)
        self.entries.pop(key, None)
        self.entries[key] = {"size": size, "mtime_ns": mtime, "sha256": digest}
        while len(self.entries) > MAX_CACHE_ENTRIES:
            self.entries.pop(next(iter(self.entries)))
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            write_atomic(self.path, json.dumps({"files": self.entries}, indent=1) + "\n")
        except OSError as exc:  # a cache that cannot be written only costs time
            log.warning("could not save the weights hash cache %s: %s", self.path, exc.strerror)
        self.dirty = False


def _model_info(data: Any, what: str) -> ModelInfo:
    d = strict_json.expect_object(data, what)
    strict_json.only_keys(d, [f.name for f in fields(ModelInfo)], what)
    files = strict_json.expect_object(d.get("files", {}), f"'{what}.files'")
    for k in files:
        if not _HEX64.match(strict_json.expect_str(files, k, where=f"{what}.files", max_len=64)):
            raise strict_json.InvalidJson(f"'{what}.files.{k}' is not a SHA-256")
    digest = strict_json.expect_str(d, "weights_sha256", where=what, max_len=64)
    if digest and not _HEX64.match(digest):
        raise strict_json.InvalidJson(f"'{what}.weights_sha256' is not a SHA-256")
    return ModelInfo(
        name=strict_json.expect_str(d, "name", where=what, max_len=200, non_empty=True),
        path=strict_json.expect_str(d, "path", where=what, max_len=4096, non_empty=True),
        format=strict_json.expect_str(d, "format", where=what, choices=FORMATS),
        architecture=strict_json.expect_str(d, "architecture", where=what, max_len=256),
        model_type=strict_json.expect_str(d, "model_type", where=what, max_len=256),
        size_bytes=strict_json.expect_int(d, "size_bytes", where=what, lo=0, hi=1 << 53),
        weights_sha256=digest,
        files=dict(files),
        added=strict_json.expect_str(d, "added", "", where=what, max_len=64),
    )


class ModelRegistry:
    """The registered model folders and which one is the default."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else AppPaths.detect().models / "registry.json"
        self.models: dict[str, ModelInfo] = {}
        self.default: str | None = None
        self.problems: list[str] = []
        self._load()

    def _load(self) -> None:
        if not os.path.lexists(self.path):
            return
        try:
            data = strict_json.expect_object(
                strict_json.read_file(self.path, max_bytes=MAX_REGISTRY_BYTES), "the model list")
            entries = strict_json.expect_list(data.get("models", []), "'models'", max_items=10_000)
        except (OSError, ValueError) as exc:
            moved = set_aside(self.path, str(exc))
            self.problems.append(f"The model list was damaged and has been kept as {moved.name}; it starts empty.")
            self.models, self.default = {}, None
            return
        bad: list[str] = []
        try:
            default = strict_json.expect_str(data, "default", None, max_len=200)
        except ValueError as exc:
            bad.append(str(exc))
            default = None
        for i, entry in enumerate(entries):
            try:
                info = _model_info(entry, f"models[{i}]")
            except ValueError as exc:
                bad.append(str(exc))
                continue
            if info.name in self.models:
                bad.append(f"the name '{info.name}' is registered twice")
                continue
            self.models[info.name] = info
        if default and default not in self.models:
            bad.append(f"the default '{default}' is not a registered model")
            default = None
        self.default = default
        if bad:
            moved = set_aside(self.path, "; ".join(bad[:3]))
            self.problems.append(
                f"Part of the model list was damaged ({bad[0]}); the original was kept as {moved.name} and "
                f"{len(self.models)} model(s) were kept.")
            try:
                self.save()
            except OSError as exc:
                log.warning("could not rewrite the model list %s: %s", self.path, exc.strerror)

    def save(self) -> None:
        payload = {"default": self.default, "models": [asdict(m) for m in self.models.values()]}
        write_atomic(self.path, json.dumps(payload, indent=2) + "\n")

    def add(self, folder: Path, name: str | None = None, progress: Callable[[str], None] | None = None) -> ModelInfo:
        info = inspect_model_folder(folder, name, progress)
        if info.name in self.models and self.models[info.name].path != info.path:
            raise ModelFolderError(
                f"A model named '{info.name}' is already registered ({self.models[info.name].path}); "
                "choose another name with --name."
            )
        self.models[info.name] = info
        if self.default is None and not info.needs_conversion:
            self.default = info.name
        self.save()
        return info

    def remove(self, name: str) -> ModelInfo:
        info = self.get(name)
        del self.models[name]
        if self.default == name:
            self.default = None
        self.save()
        return info

    def set_default(self, name: str) -> ModelInfo:
        info = self.get(name)
        if info.needs_conversion:
            raise ModelFolderError(
                f"'{name}' is an original InternVL2/XMedGPT checkpoint; convert it first with "
                f"xmedgpt convert-checkpoint {info.path} NEW_FOLDER, then add the new folder."
            )
        self.default = name
        self.save()
        return info

    def get(self, name: str) -> ModelInfo:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelFolderError(f"No model named '{name}' is registered (registered: {known}).")
        return self.models[name]

    def default_model(self) -> ModelInfo | None:
        return self.models.get(self.default) if self.default else None


def describe_size(info: ModelInfo) -> str:
    return _human_size(info.size_bytes)
