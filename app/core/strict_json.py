"""Reading JSON the workstation did not necessarily write itself: strict, bounded, typed.

Every state file (settings, drafts, journal lines, the model registry, model configs,
the audit head) may have been damaged by a crash, edited by hand or replaced by
someone hostile. :func:`loads` and :func:`read_file` turn every such problem into
one exception, :class:`InvalidJson` (a ``ValueError``), so callers have one thing to
catch and set the file aside:

- ``NaN``, ``Infinity`` and numbers that overflow to infinity (``1e400``) are refused;
- nesting deeper than ``max_depth`` (and the ``RecursionError`` of very deep input) is refused;
- strings that cannot be written back as UTF-8 (lone surrogates) are refused;
- :func:`read_file` reads regular files only (never a device, FIFO or socket, which
  could block or never end) and at most ``max_bytes``.

The ``expect_*`` helpers check one field of a parsed object against its type and range
and name the field in the error.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
MAX_FILE_BYTES = 64 * 1024 * 1024
_MISSING: Any = object()


class InvalidJson(ValueError):
    """The text or file is not acceptable JSON, or a field has the wrong type or range."""


def _reject_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"the number {text[:40]} is too large")
    return value


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, allow_nan: bool = False) -> Any:
    """Parse ``text`` strictly (see the module docstring); :class:`InvalidJson` on any problem.

    ``allow_nan`` accepts ``NaN``/``Infinity`` (only for files whose content is checked
    some other way, such as the hash-chained audit log)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        if allow_nan:
            value = json.loads(text)
        else:
            value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() of a number with too many digits
        raise InvalidJson(str(exc).splitlines()[0][:200]) from None
    check_tree(value, max_depth)
    return value


def check_tree(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings that are not valid Unicode (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
            continue
        if isinstance(item, dict):
            children: Collection[Any] = list(item.values())
            for key in item:
                _check_text(key)
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= max_depth:
            raise InvalidJson(f"nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _check_text(s: Any) -> None:
    if isinstance(s, str):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJson("text with an invalid character (unpaired surrogate)") from None


def read_regular(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file (after following symlinks) of at most ``max_bytes``.

    Opened non-blocking, so a FIFO put in its place cannot hang the caller; ``OSError``
    when it cannot be opened, :class:`InvalidJson` when it is not a regular file or is too big.
    """
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidJson("not a regular file")
        if st.st_size > max_bytes:
            raise InvalidJson(f"too large ({st.st_size} bytes; at most {max_bytes})")
        chunks, left = [], max_bytes + 1
        while left > 0:
            block = os.read(fd, min(left, 1 << 20))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise InvalidJson(f"grew beyond {max_bytes} bytes while being read")
        return data
    finally:
        os.close(fd)


def read_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse the JSON file at ``path`` strictly; ``OSError`` if unreadable, :class:`InvalidJson` if damaged."""
    return loads(read_regular(Path(path), max_bytes), max_depth=max_depth)


# ---- typed fields ---------------------------------------------------------------------------

def _name(where: str, key: str) -> str:
    return f"'{where}.{key}'" if where else f"'{key}'"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidJson(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def expect_list(value: Any, what: str, *, max_items: int = 100_000) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidJson(f"{what} must be a list, not {type(value).__name__}")
    if len(value) > max_items:
        raise InvalidJson(f"{what} has {len(value)} items (at most {max_items})")
    return value


def only_keys(d: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise InvalidJson(f"{where or 'the object'} has unknown field(s) {', '.join(map(repr, unknown[:5]))}")


def _get(d: Mapping[str, Any], key: str, default: Any, where: str) -> Any:
    if key in d:
        return d[key]
    if default is _MISSING:
        raise InvalidJson(f"{_name(where, key)} is missing")
    return default


def expect_str(d: Mapping[str, Any], key: str, default: Any = _MISSING, *, where: str = "",
               max_len: int = 100_000, nullable: bool = False, choices: Collection[str] | None = None,
               non_empty: bool = False) -> Any:
    value = _get(d, key, default, where)
    if value is None and (nullable or default is None):
        return None
    if not isinstance(value, str):
        raise InvalidJson(f"{_name(where, key)} must be text, not {_short(value)}")
    if len(value) > max_len:
        raise InvalidJson(f"{_name(where, key)} is longer than {max_len} characters")
    if non_empty and not value:
        raise InvalidJson(f"{_name(where, key)} is empty")
    if choices is not None and value not in choices:
        raise InvalidJson(f"{_name(where, key)} must be one of {', '.join(sorted(choices))}, not {_short(value)}")
    return value


def expect_int(d: Mapping[str, Any], key: str, default: Any = _MISSING, *, where: str = "",
               lo: int | None = None, hi: int | None = None, nullable: bool = False) -> Any:
    value = _get(d, key, default, where)
    if value is None and (nullable or default is None):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJson(f"{_name(where, key)} must be a whole number, not {_short(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidJson(f"{_name(where, key)} must be from {lo} to {hi}, not {_short(value)}")
    return value


def expect_number(d: Mapping[str, Any], key: str, default: Any = _MISSING, *, where: str = "",
                  lo: float | None = None, hi: float | None = None, nullable: bool = False) -> Any:
    value = _get(d, key, default, where)
    if value is None and (nullable or default is None):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidJson(f"{_name(where, key)} must be a number, not {_short(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidJson(f"{_name(where, key)} must be from {lo} to {hi}, not {_short(value)}")
    return float(value)


def expect_bool(d: Mapping[str, Any], key: str, default: Any = _MISSING, *, where: str = "",
                nullable: bool = False) -> Any:
    value = _get(d, key, default, where)
    if value is None and (nullable or default is None):
        return None
    if not isinstance(value, bool):
        raise InvalidJson(f"{_name(where, key)} must be true or false, not {_short(value)}")
    return value


def expect_each(values: list[Any], what: str, check: Callable[[Any, str], Any]) -> list[Any]:
    """``check(item, 'what[i]')`` for every item; the results."""
    return [check(item, f"{what}[{i}]") for i, item in enumerate(values)]
