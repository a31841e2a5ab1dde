"""Result records (docs/architecture.md, Records): the schema shipped in the package, atomic writes, validation."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from kdbench.errors import UsageError
from kdbench.record_checks import MESSAGE_CHARS, cut, semantic_errors, shown, structural_errors

SCHEMA_VERSION = 2
#: One folder name of a record's path (task, protocol key, method).
_PART = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,79}$")


def default_results() -> Path:
    """Where a user's runs go unless `--results` says otherwise: `$KDBENCH_RESULTS`, else
    `./kdbench-results`. The leaderboard's `results/` is only ever written when named."""
    return Path(os.environ.get("KDBENCH_RESULTS") or "kdbench-results")


@cache
def schema() -> dict[str, Any]:
    text = resources.files("kdbench").joinpath("schema/record.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def record_path(results: Path, task: str, protocol: str, method: str, seed: int) -> Path:
    """`results/<task>/<protocol key>/<method>/seed<N>.json` (the key: the card's name, or
    `<name>+<sha8>` for an ablation; kdbench.protocol.Protocol.key). The parts are
    checked as single safe names, and the path as staying under `results`."""
    for what, part in (("task", task), ("protocol key", protocol), ("method", method)):
        if not _PART.match(part):
            raise UsageError(f"{what} {cut(repr(part))} is not a safe name ([a-z0-9_+-], at most 80 characters)")
    return inside(results, Path(results) / task / protocol / method / f"seed{int(seed)}.json", "record path")


#: A temp file of an interrupted write older than this is removed by the next write beside it (a
#: live writer keeps touching its file; none takes a minute between two writes of one file).
STALE_TMP_SECONDS = 60.0
#: Files written by kdbench (records, checkpoints) are readable by others, as files usually are.
FILE_MODE = 0o644
#: A record file larger than this is refused unread.
MAX_RECORD_BYTES = 32 << 20


def _clean_stale(folder: Path, name: str) -> None:
    """Remove `.<name>.*.tmp` files that an interrupted write left in `folder`."""
    now = time.time()
    try:
        stale = [p for p in folder.glob(f".{glob.escape(name)}.*.tmp")]
    except OSError:
        return
    for tmp in stale:
        try:
            if now - tmp.lstat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half; the
    file gets `mode`, and stale temp files of earlier interrupted writes of `path` are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Validate, then write atomically (an invalid record never reaches the disk)."""
    errors = validation_errors(record)
    if errors:
        raise ValueError(f"refusing to write an invalid record: {errors[0]}")
    text = json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def validation_errors(record: Any) -> list[str]:
    """Every violation as 'field.path: message' (one line each, values cut), empty when valid:
    the shipped schema, then what it cannot say (kdbench.record_checks: finite numbers, bounded
    strings and nesting, dates, registered metrics in their ranges, the primary metric present)."""
    structural = structural_errors(record)
    if structural:  # the schema's validator would recurse into (or choke on) what these describe
        return structural
    found = sorted(_validator().iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path])
    errors = [cut(f"{'.'.join(map(str, e.absolute_path)) or '(record)'}: {_message(e)}", MESSAGE_CHARS + 120)
              for e in found]
    return errors or semantic_errors(record)


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message with the offending value cut (a 5 MB value gives a short line)."""
    text, full = error.message, repr(error.instance)
    if len(full) > MESSAGE_CHARS and full in text:
        text = text.replace(full, shown(error.instance))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RecordReadError(ValueError):
    """A file that cannot be read as a record; the message says why in one line."""


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (raises as `read_record_text`)."""
    return read_record_text(path)[1]


def read_record_text(path: Path) -> tuple[str, dict[str, Any]]:
    """The text of `path` and the JSON object it holds.

    Raises:
        FileNotFoundError: no such file.
        RecordReadError: anything else: a directory, an unreadable file or link, over
            `MAX_RECORD_BYTES`, not UTF-8, not JSON, nested beyond what the parser takes, a number
            too large to parse, or JSON that is not an object.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        if os.path.islink(path):
            raise RecordReadError("a broken symbolic link") from None
        raise
    except IsADirectoryError:
        raise RecordReadError("a directory, not a record file") from None
    except OSError as e:
        raise RecordReadError(f"unreadable: {e.strerror or e}") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordReadError(f"over {MAX_RECORD_BYTES >> 20} MiB, not a record")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordReadError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        record = json.loads(text)
    except RecursionError:
        raise RecordReadError("JSON nested too deeply to read") from None
    except json.JSONDecodeError as e:
        raise RecordReadError(f"not JSON: {cut(e.msg, 80)} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer beyond the interpreter's digit limit
        raise RecordReadError(f"not a readable JSON record: {cut(str(e), 120)}") from None
    if not isinstance(record, dict):
        raise RecordReadError(f"JSON {type(record).__name__}, not a record object")
    return text, record


def record_files(root: Path, pattern: str = "seed*.json") -> Iterator[tuple[Path, str | None]]:
    """Every file named like `pattern` under `root`, sorted, each with why it is not one to read
    (None: a file to read). Symbolic links to folders are not followed (no loops); a link to a
    file counts only when it resolves inside `root`; a folder so named is reported."""
    root = Path(root)
    inside = root.resolve()
    found: list[tuple[Path, str | None]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs:
            if fnmatch.fnmatchcase(name, pattern):
                found.append((Path(folder) / name, "a directory, not a record file"))
        for name in files:
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            path = Path(folder) / name
            found.append((path, _link_problem(path, inside) if os.path.islink(path) else None))
    found.sort(key=lambda f: str(f[0]))
    yield from found


def _link_problem(path: Path, inside: Path) -> str | None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "a broken or looping symbolic link"
    if not target.is_relative_to(inside):
        return f"a symbolic link to outside {inside}"
    return None


def validate_paths(paths: list[Path]) -> Iterator[tuple[Path, list[str]]]:
    """(file, errors) for every record file under the given files and directories; never raises
    for what a file holds (every problem is one line)."""
    for root in paths:
        files = record_files(root) if Path(root).is_dir() else iter([(Path(root), None)])
        for file, problem in files:
            if problem is not None:
                yield file, [problem]
                continue
            try:
                record = read_record(file)
            except FileNotFoundError:
                yield file, ["no such file"]
                continue
            except RecordReadError as e:
                yield file, [str(e)]
                continue
            yield file, validation_errors(record)


def iter_records(results: Path) -> Iterator[dict[str, Any]]:
    for file, problem in record_files(results):
        if problem is None:
            yield read_record(file)


def printable(text: str | Path, one_line: bool = True) -> str:
    """`text` safe to print: undecodable bytes of a file name and lone surrogates as escapes and,
    `one_line`, control characters (a newline in a file name) as escapes."""
    try:
        raw = os.fsencode(text) if isinstance(text, Path) else str(text).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        raw = str(text).encode("utf-8", "backslashreplace")
    line = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or not one_line else repr(c)[1:-1] for c in line)


def inside(root: Path, path: Path, what: str = "path") -> Path:
    """`path` if it stays under `root` once resolved (links, `..`), else a UsageError."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if not resolved.is_relative_to(base):
        raise UsageError(f"{what} {cut(str(path))} leaves {base}")
    return Path(path)
