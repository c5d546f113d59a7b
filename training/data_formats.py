"""Validators for the training data formats (documented in training/README.md).

- ``conversation``: InternVL JSONL, ``{"image": ..., "conversations": [{"from": "human", "value":
  "<image>\\n..."}, {"from": "gpt", "value": ...}]}``; grounding as
  ``<ref>phrase</ref><box>[[x1,y1,x2,y2]]</box>``, integers on the 0–1000 scale;
- ``preference``: ``{"image", "prompt", "chosen", "rejected"}`` (DPO);
- ``audio``: ``{"audio", "conversations", ["image"]}``, a human turn holding ``<audio>``;
- ``annotation``: the phantom ground truth that ``xmedgpt eval`` reads;
- ``meta``: a JSON object of datasets ``{name: {"root", "annotation", "repeat_time", ...}}``.

Each check returns every problem it finds with the file and 1-based line number,
so an engineer fixes a broken file in one pass; :func:`validate_jsonl` and
:func:`validate_meta` raise :class:`DataFormatError` instead.

``python -m training.data_formats FILE [--kind KIND] [--root DIR]`` checks a file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference.errors import XMedError
from inference.parsing import BOX_SCALE

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
ROLES = ("human", "gpt")
KINDS = ("conversation", "preference", "audio", "annotation", "meta")

_TAG = re.compile(r"</?(?:ref|box)>")
_BOX_LIST = re.compile(r"^\s*\[\s*(\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*)\s*\]\s*$")
_INNER = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"^[+-]?\d+$")


class DataFormatError(XMedError):
    """A training data file does not follow its documented format."""


@dataclass(frozen=True)
class RecordProblem:
    path: Path | None
    line: int  # 1-based; 0 when the problem concerns the whole file
    message: str

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "<record>"
        return f"{where}:{self.line}: {self.message}" if self.line else f"{where}: {self.message}"


# ----------------------------------------------------------------------------- grounding


def check_grounding(text: str) -> list[str]:
    """Problems with the ``<ref>…</ref><box>[[…]]</box>`` markup in one answer (empty if none)."""
    problems: list[str] = []
    state, phrase_start = "text", 0
    for m in _TAG.finditer(text):
        tag = m.group(0)
        if state == "text":
            if tag == "<ref>":
                state, phrase_start = "ref", m.end()
            elif tag == "<box>":
                state, phrase_start = "box", m.end()
            else:
                problems.append(f"{tag} without its opening tag")
        elif state == "ref":
            if tag != "</ref>":
                problems.append(f"<ref> not closed before {tag}")
                state = "text"
                continue
            if not text[phrase_start:m.start()].strip():
                problems.append("empty <ref></ref> phrase")
            following = text[m.end():].lstrip(" ")
            if not following.startswith("<box>"):
                problems.append(f"</ref> for '{text[phrase_start:m.start()].strip()[:40]}' is not followed by <box>")
            state = "text"
        elif state == "box":
            if tag != "</box>":
                problems.append(f"<box> not closed before {tag}")
                state = "text"
                continue
            problems.extend(check_box_list(text[phrase_start:m.start()]))
            state = "text"
    if state != "text":
        problems.append(f"<{state}> is never closed")
    return problems


def check_box_list(body: str) -> list[str]:
    """``[[x1, y1, x2, y2], …]``: integers on 0–1000 with x1 < x2 and y1 < y2."""
    m = _BOX_LIST.match(body)
    if not m:
        return [f"box must be a list of [x1, y1, x2, y2] lists, got {body.strip()[:40]!r}"]
    problems = []
    for inner in _INNER.findall(m.group(1)):
        parts = [p.strip() for p in inner.split(",")]
        if len(parts) != 4:
            problems.append(f"box [{inner.strip()}] has {len(parts)} numbers instead of 4")
            continue
        if not all(_INT.match(p) for p in parts):
            problems.append(f"box [{inner.strip()}] must hold integers on the 0–{BOX_SCALE} scale")
            continue
        x1, y1, x2, y2 = (int(p) for p in parts)
        if not all(0 <= v <= BOX_SCALE for v in (x1, y1, x2, y2)):
            problems.append(f"box [{inner.strip()}] is outside 0–{BOX_SCALE}")
        elif x1 >= x2 or y1 >= y2:
            problems.append(f"box [{inner.strip()}] needs x1 < x2 and y1 < y2")
    return problems


# ----------------------------------------------------------------------------- records


def _image_list(rec: dict, problems: list[str]) -> list[str]:
    if "image" not in rec:
        return []
    image = rec["image"]
    images = image if isinstance(image, list) else [image]
    if not images or not all(isinstance(i, str) and i.strip() for i in images):
        problems.append("'image' must be a non-empty path or a list of paths")
        return []
    return images


def _check_files(paths: Sequence[str], root: Path | None, what: str, problems: list[str]) -> None:
    if root is None:
        return
    for p in paths:
        full = Path(p) if Path(p).is_absolute() else root / p
        if not full.is_file():
            problems.append(f"{what} file not found: {full}")


def _check_conversations(rec: dict, n_images: int, problems: list[str]) -> list[dict]:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        problems.append("'conversations' must be a non-empty list of turns")
        return []
    turns = [t for t in conv if isinstance(t, dict)]
    if len(turns) != len(conv):
        problems.append("every turn must be an object with 'from' and 'value'")
        return []
    if turns and turns[0].get("from") == "system":
        turns = turns[1:]
    for k, turn in enumerate(turns):
        want = ROLES[k % 2]
        if turn.get("from") != want:
            problems.append(f"turn {k + 1} is from {turn.get('from')!r}, expected {want!r} (human and gpt alternate)")
            return turns
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"turn {k + 1} ({want}) has an empty or missing 'value'")
    if len(turns) % 2:
        problems.append("the conversation must end with a gpt turn")
    values = [t.get("value") if isinstance(t.get("value"), str) else "" for t in turns]
    human_images = sum(v.count(IMAGE_TOKEN) for v in values[0::2])
    if n_images and human_images != n_images:
        problems.append(f"{human_images} {IMAGE_TOKEN} placeholders in the human turns for {n_images} image(s)")
    if not n_images and human_images:
        problems.append(f"{IMAGE_TOKEN} placeholder but no 'image'")
    for k, v in enumerate(values[1::2]):
        if IMAGE_TOKEN in v:
            problems.append(f"gpt turn {k + 1} contains {IMAGE_TOKEN}")
        problems.extend(f"gpt turn {k + 1}: {p}" for p in check_grounding(v))
    return turns


def check_conversation(rec: object, root: Path | None = None) -> list[str]:
    """Problems of one InternVL conversation record (``root``: folder images are relative to)."""
    if not isinstance(rec, dict):
        return ["a record must be a JSON object"]
    problems: list[str] = []
    images = _image_list(rec, problems)
    _check_conversations(rec, len(images), problems)
    _check_files(images, root, "image", problems)
    return problems


def check_preference(rec: object, root: Path | None = None) -> list[str]:
    """Problems of one preference record: image, prompt, chosen, rejected."""
    if not isinstance(rec, dict):
        return ["a record must be a JSON object"]
    problems: list[str] = []
    images = _image_list(rec, problems)
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            problems.append(f"'{key}' must be a non-empty string")
    if problems:
        return problems
    n = rec["prompt"].count(IMAGE_TOKEN)
    if n != len(images):
        problems.append(f"{n} {IMAGE_TOKEN} placeholders in the prompt for {len(images)} image(s)")
    if rec["chosen"] == rec["rejected"]:
        problems.append("'chosen' and 'rejected' are identical")
    for key in ("chosen", "rejected"):
        problems.extend(f"{key}: {p}" for p in check_grounding(rec[key]))
    _check_files(images, root, "image", problems)
    return problems


def check_audio(rec: object, root: Path | None = None) -> list[str]:
    """Problems of one audio record: audio path, conversation with ``<audio>``, optional image."""
    if not isinstance(rec, dict):
        return ["a record must be a JSON object"]
    problems: list[str] = []
    audio = rec.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        problems.append("'audio' must be the path of a sound file")
        audio = None
    elif not audio.lower().endswith(AUDIO_SUFFIXES):
        problems.append(f"'audio' must be one of {', '.join(AUDIO_SUFFIXES)}, got {audio!r}")
    images = _image_list(rec, problems)
    turns = _check_conversations(rec, len(images), problems)
    spoken = sum(t.get("value", "").count(AUDIO_TOKEN) for t in turns[0::2] if isinstance(t.get("value"), str))
    if turns and spoken != 1:
        problems.append(f"the human turns must hold exactly one {AUDIO_TOKEN}, found {spoken}")
    if audio:
        _check_files([audio], root, "audio", problems)
    _check_files(images, root, "image", problems)
    return problems


def check_annotation(rec: object, root: Path | None = None) -> list[str]:
    """Problems of one ground-truth record (image, width, height, lesions with boxes)."""
    if not isinstance(rec, dict):
        return ["a record must be a JSON object"]
    problems: list[str] = []
    images = _image_list(rec, problems)
    if not images:
        problems.append("'image' is missing")
    w, h = rec.get("width"), rec.get("height")
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        problems.append("'width' and 'height' must be positive integers")
        w = h = None
    lesions = rec.get("lesions")
    if not isinstance(lesions, list):
        problems.append("'lesions' must be a list (empty when the image is normal)")
        lesions = []
    for k, les in enumerate(lesions, 1):
        if not isinstance(les, dict):
            problems.append(f"lesion {k} must be an object")
            continue
        box = les.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                               for v in box)):
            problems.append(f"lesion {k}: 'box' must be [x0, y0, x1, y1] in pixels")
        elif not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0 or (
                w is not None and (box[2] > w or box[3] > h)):
            problems.append(f"lesion {k}: box {box} is empty or outside the {w}×{h} image")
    _check_files(images, root, "image", problems)
    return problems


CHECKS: dict[str, Callable[[object, Path | None], list[str]]] = {
    "conversation": check_conversation,
    "preference": check_preference,
    "audio": check_audio,
    "annotation": check_annotation,
}


# ----------------------------------------------------------------------------- files


def check_jsonl(path: Path | str, kind: str, root: Path | str | None = None, check_files: bool = True,
                limit: int = 100) -> tuple[int, list[RecordProblem]]:
    """(number of records, problems) of a JSONL file; ``root`` defaults to the file's folder."""
    if kind not in CHECKS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(CHECKS)}")
    path = Path(path)
    base = (Path(root) if root is not None else path.parent) if check_files else None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return 0, [RecordProblem(path, 0, f"cannot read: {exc.strerror or exc}")]
    problems: list[RecordProblem] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    count = 0
    for number, data in enumerate(lines, 1):
        if len(problems) >= limit:
            break
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(RecordProblem(path, number, "not UTF-8 text"))
            continue
        if not line.strip():
            problems.append(RecordProblem(path, number, "empty line"))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(RecordProblem(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        count += 1
        problems.extend(RecordProblem(path, number, p) for p in CHECKS[kind](rec, base))
    if not lines:
        problems.append(RecordProblem(path, 0, "the file holds no records"))
    return count, problems[:limit]


def check_meta(path: Path | str, check_files: bool = True) -> tuple[dict, list[RecordProblem]]:
    """(meta, problems) of an InternVL meta JSON and of every annotation file it lists.

    Relative ``root`` and ``annotation`` paths are resolved against the meta file's folder.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [RecordProblem(path, 0, f"cannot read: {exc.strerror or exc}")]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", 0)
        return {}, [RecordProblem(path, line, f"not valid JSON ({getattr(exc, 'msg', exc)})")]
    if not isinstance(meta, dict) or not meta:
        return {}, [RecordProblem(path, 0, "must be a non-empty object of datasets")]
    problems: list[RecordProblem] = []
    for name, entry in meta.items():
        def bad(msg: str, name: str = name) -> None:
            problems.append(RecordProblem(path, 0, f"dataset '{name}': {msg}"))

        if not isinstance(entry, dict):
            bad("must be an object with root, annotation and repeat_time")
            continue
        for key in ("root", "annotation"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                bad(f"'{key}' must be a path")
        rep = entry.get("repeat_time")
        if isinstance(rep, bool) or not isinstance(rep, (int, float)) or not math.isfinite(rep) or rep <= 0:
            bad(f"'repeat_time' must be a positive number, got {rep!r}")
        if "data_augment" in entry and not isinstance(entry["data_augment"], bool):
            bad("'data_augment' must be true or false")
        length = entry.get("length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
            bad(f"'length' must be a non-negative integer, got {length!r}")
            length = None
        if not isinstance(entry.get("annotation"), str) or not isinstance(entry.get("root"), str):
            continue
        ann = _resolve(path.parent, entry["annotation"])
        root = _resolve(path.parent, entry["root"])
        if not ann.is_file():
            bad(f"annotation file not found: {ann}")
            continue
        count, sub = check_jsonl(ann, "conversation", root=root, check_files=check_files)
        problems.extend(sub)
        if length is not None and length != count:
            bad(f"'length' is {length} but {ann.name} holds {count} records")
    return meta, problems


def _resolve(base: Path, p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else base / p


def _raise(problems: list[RecordProblem], what: Path) -> None:
    shown = "\n".join(str(p) for p in problems[:10])
    more = f"\n… and {len(problems) - 10} more" if len(problems) > 10 else ""
    raise DataFormatError(f"{what}: {len(problems)} problem(s); first: {problems[0]}", detail=shown + more)


def validate_jsonl(path: Path | str, kind: str, root: Path | str | None = None, check_files: bool = True) -> int:
    """Number of records, or :class:`DataFormatError` naming the first bad line."""
    count, problems = check_jsonl(path, kind, root, check_files)
    if problems:
        _raise(problems, Path(path))
    return count


def validate_meta(path: Path | str, check_files: bool = True) -> dict:
    meta, problems = check_meta(path, check_files)
    if problems:
        _raise(problems, Path(path))
    return meta


def _guess_kind(path: Path) -> str:
    if path.suffix == ".json":
        return "meta"
    first = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return "conversation"
    if isinstance(rec, dict):
        if "chosen" in rec:
            return "preference"
        if "audio" in rec:
            return "audio"
        if "lesions" in rec:
            return "annotation"
    return "conversation"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data_formats",
                                     description="Check training data files against the documented formats.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--kind", choices=KINDS, help="format (guessed from the file when left out)")
    parser.add_argument("--root", type=Path, help="folder that image/audio paths are relative to")
    parser.add_argument("--no-files", action="store_true", help="do not check that referenced files exist")
    args = parser.parse_args(argv)
    bad = 0
    for f in args.files:
        kind = args.kind or _guess_kind(f)
        if kind == "meta":
            meta, problems = check_meta(f, not args.no_files)
            count = len(meta)
        else:
            count, problems = check_jsonl(f, kind, args.root, not args.no_files)
        for p in problems:
            sys.stdout.write(f"{p}\n")
        sys.stdout.write(f"{f}: {kind}, {count} record(s), {len(problems)} problem(s)\n")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
