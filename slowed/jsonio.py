"""JSON and JSONL reading, and atomic file writes (a temporary file in the target's folder, then `os.replace`).

A reader never sees a half-written file, and a failed write leaves the previous file (or nothing) behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _file_mode(path: Path) -> int:
    """The mode a rewrite of ``path`` keeps: its current one, else what ``open()`` would give (0o666 & ~umask)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on normal exit it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        temporary.chmod(_file_mode(path))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` atomically; returns ``path`` as a Path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return Path(path)


def jsonable(value: Any) -> Any:
    """JSON stand-in for a value `json` cannot write: sets sorted into lists, paths as strings, enums by value,
    anything else as ``str()``."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented UTF-8 JSON (non-ASCII kept; other values through `jsonable`) with a final
    newline, atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=sort_keys, default=jsonable)
    return write_atomic(path, text + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept; ``str()`` for other values), atomically."""
    return write_atomic(
        path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    )


def read_text(path: str | os.PathLike, error: type[ValueError] = ValueError) -> str:
    """The file as UTF-8 text (a byte-order mark dropped); `error` (a ValueError) naming the file otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as decode_error:
        raise error(
            f"{path}: not UTF-8 text (byte {decode_error.start}: {decode_error.reason}); re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in a UTF-8 file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The values of a JSONL file, blank lines skipped; ValueError naming ``path:line`` for a bad line."""
    rows = []
    with Path(path).open(encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not a JSON line ({error})") from error
    return rows
