"""Strict reading of the data's CSV tables and checks of the paths they name.

Every CSV of a data source (`train_curated.csv`, `train_noisy.csv`, `sample_submission.csv`,
`test_labels.csv`, the Zenodo meta files, a corrections file) is read here, and refused with a
:class:`fat.errors.DataError` naming the file, the line or row and the problem when it is:

* not a regular file (a directory, FIFO, device, symlink loop, dangling symlink) or unreadable;
* not UTF-8 text (a UTF-8 byte-order mark is fine; UTF-16/32 and legacy 8-bit encodings are not);
* headed by an empty, duplicated or reserved column name (`Unnamed: 2`, or `Bark.1` beside `Bark`:
  the names pandas invents for such columns, which would silently add or drop a column);
* holding rows with more fields than the header (e.g. an unquoted comma-joined `labels` field).

Blank lines are skipped, CRLF line endings are fine. The fnames of a table must be plain file names
inside their audio folder: no path separators, `.`/`..`, control characters, or more than 255 bytes.
"""
from __future__ import annotations

import codecs
import csv
import errno
import io
import os
import re
import stat
from pathlib import Path

import pandas as pd

from fat.errors import DataError, rows

MAX_NAME_BYTES = 255  # the file-name limit of ext4, XFS, APFS and NTFS
_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
_RESERVED = re.compile(r"^Unnamed: \d+$")
_MANGLED = re.compile(r"^(.*)\.(\d+)$")


def _stat(path: Path) -> tuple[os.stat_result | None, str | None]:
    """(stat following symlinks, None) or (None, the problem in words)."""
    try:
        return os.stat(path), None
    except FileNotFoundError:
        if os.path.islink(path):
            return None, f"dangling symlink (to {os.readlink(path)})"
        return None, "missing"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        if e.errno == errno.EACCES:
            return None, "permission denied"
        if e.errno == errno.ENOTDIR:
            return None, "missing: a folder on its path is a file"
        if e.errno == errno.ENAMETOOLONG:
            return None, "name too long for the filesystem"
        return None, f"cannot be read ({e.strerror})"


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def file_problem(path: str | Path) -> str | None:
    """None when `path` is (a symlink to) a readable regular file, else the problem in words:
    'missing', 'symlink loop', 'is a directory, not a file', 'permission denied', …"""
    path = Path(path)
    st, problem = _stat(path)
    if problem:
        return problem
    if not stat.S_ISREG(st.st_mode):
        target = f" ({os.path.realpath(path)})" if os.path.islink(path) else ""
        return f"is {_kind(st.st_mode)}{target}, not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def folder_problem(path: str | Path) -> str | None:
    """None when `path` is (a symlink to) a readable folder, else the problem in words."""
    path = Path(path)
    st, problem = _stat(path)
    if problem:
        return problem
    if not stat.S_ISDIR(st.st_mode):
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
        return f"is {kind}, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "permission denied"
    return None


def read_text(path: str | Path) -> str:
    """The file's text, decoded as UTF-8 (with or without a byte-order mark)."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"{path}: {problem}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if raw.startswith(bom):
            raise DataError(f"{path}: {name} text (it starts with a {name} byte-order mark); save it as UTF-8")
    if b"\0" in raw:
        lines = sorted({raw[:m.start()].count(b"\n") + 1 for m in re.finditer(b"\0", raw)})
        raise DataError(f"{path}: NUL bytes on line(s) {lines[:10]} (binary or UTF-16 data?); "
                        f"a CSV must be UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text: byte 0x{raw[e.start]:02x} on line {line} "
                        f"(a Latin-1 or Windows-1252 file?); save it as UTF-8") from None


def read_rows(path: str | Path, *, comments: bool = False) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row, the header included. With `comments`, lines
    starting with `#` are skipped too."""
    path = Path(path)
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out = []
    try:
        start = 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if comments and fields[0].lstrip().startswith("#"):
                continue
            out.append((line, fields))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({e}; an unclosed or stray quote?)") from None
    return out


def header_problems(path: Path, names: list[str]) -> list[str]:
    """Empty, duplicated and reserved column names of a header, one problem each."""
    problems = []
    stripped = [n.strip() for n in names]
    for i, n in enumerate(stripped, start=1):
        if not n:
            problems.append(f"{path}: column {i} has an empty name in the header "
                            f"(a trailing comma? pandas would read it as 'Unnamed: {i - 1}')")
        elif _RESERVED.match(n):
            problems.append(f"{path}: column {i} is named {n!r}, a reserved name "
                            f"(pandas's name for a column whose header cell is empty)")
        elif (m := _MANGLED.match(n)) and m.group(1) in stripped:
            problems.append(f"{path}: column {i} is named {n!r}, a reserved name "
                            f"(pandas's name for a second {m.group(1)!r} column)")
    seen: dict[str, list[int]] = {}
    for i, n in enumerate(stripped, start=1):
        if n:
            seen.setdefault(n, []).append(i)
    for n, cols in seen.items():
        if len(cols) > 1:
            problems.append(f"{path}: duplicate column name {n!r} (columns {', '.join(map(str, cols))}); "
                            f"pandas would silently keep one as {n!r} and rename the other {n + '.1'!r}")
    return problems


def read_csv(path: str | Path, *, required: tuple[str, ...] = (), comments: bool = False,
             expected: str = "") -> pd.DataFrame:
    """A CSV with a header as a DataFrame of strings (column names stripped, index = line numbers).
    Raises DataError listing every problem of the file: see the module docstring."""
    path = Path(path)
    rows_ = read_rows(path, comments=comments)
    expected = expected or ",".join(required)
    if not rows_:
        raise DataError(f"{path}: empty file; expected a header '{expected}' and one row per clip")
    (_, header), body = rows_[0], rows_[1:]
    names = [n.strip() for n in header]
    problems = header_problems(path, header)
    missing = [c for c in required if c not in names]
    if missing:
        problems.append(f"{path}: missing column(s) {missing}; expected '{expected}', got {','.join(names)!r}")
    long = [(line, f) for line, f in body if len(f) > len(names)]
    if long:
        lines = ", ".join(str(line) for line, _ in long[:10])
        plural = "s" if len(long) > 1 else ""
        problems.append(f"{path}: rows with more fields than the header's {len(names)} (line{plural} "
                        f"{lines}): {rows([f[0].strip() for _, f in long])}; a field holding commas must be quoted, "
                        f'e.g. a comma-joined labels field: "Bark,Rain"')
    if problems:
        raise DataError(*problems)
    df = pd.DataFrame([f + [""] * (len(names) - len(f)) for _, f in body], columns=names, dtype=object,
                      index=[line for line, _ in body])
    return df.astype(str) if len(df) else pd.DataFrame(columns=names, dtype=str)


def fname_problem(fname: str) -> str | None:
    """Why `fname` is not a plain file name inside its audio folder, or None."""
    if fname in (".", ".."):
        return "not a plain file name"
    if "/" in fname or "\\" in fname or os.path.isabs(fname):
        return "not a plain file name (it holds a path)"
    if any(ord(c) < 32 or ord(c) == 127 for c in fname):
        return "holds control characters"
    if len(fname.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def fname_problems(path: Path, fnames: pd.Series) -> list[str]:
    """One problem per kind of bad fname in a table's `fname` column (index = line numbers)."""
    by_problem: dict[str, list[str]] = {}
    for f in fnames:
        if f:
            p = fname_problem(f)
            if p:
                by_problem.setdefault(p, []).append(f)
    return [f"{path}: column fname: {rows(fs)}: {p}; fnames name files inside the audio folder"
            for p, fs in by_problem.items()]
