"""`fat fetch`: the optional download of FSDKaggle2019 from its Zenodo record.

Never on the default path (the pipeline runs on the embedded data without any download); only the
`fat fetch` command calls this module. What it does, in order, for each archive of the record:

1. read the record's metadata (the Zenodo REST API's JSON: a `files` list whose entries give the
   file name `key`, its `size`, its `checksum` "md5:<hex>" and its download URL `links.self`);
2. download each file to `DEST/downloads/<name>.part` with a progress bar, resuming an interrupted
   download with an HTTP `Range` request (and from zero when the server ignores it); a connection
   that drops is retried `retries` times, each retry resuming where the last one stopped;
3. verify the completed file's size and checksum against the metadata; only a verified file gets
   its final name `DEST/downloads/<name>` (a mismatch moves it aside to `<name>.bad` and fails),
   so a file under its final name is always a verified one and is skipped on the next run;
4. read a split archive (`.z01 … .zNN` + `.zip`, as `zip -s` writes it) as one zip without
   writing a joined copy (see `open_split_zip`), and unpack every archive atomically into
   `DEST/<archive name without .zip>/`, refusing members that would land outside it.

Only the standard library is used for the network and the archives (urllib, hashlib, zipfile).
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fat.fetch")

CHUNK = 1 << 20  # bytes per read while downloading / copying
USER_AGENT = "fat-fetch/0.1 (+https://github.com; python urllib)"


@dataclass(frozen=True)
class Dataset:
    name: str
    record_url: str  # the Zenodo REST API URL of the record's metadata
    archives: tuple[str, ...]  # archives the record must hold (names without .zip); each unpacks to DEST/<name>/
    required: tuple[str, ...]  # paths under DEST that must exist once everything is unpacked
    title: str = ""


ZENODO_API = "https://zenodo.org/api/records/"

FSDKAGGLE2019 = Dataset(
    name="fsdkaggle2019",
    title="FSDKaggle2019 (Zenodo record 3612637)",
    record_url=ZENODO_API + "3612637",
    archives=("FSDKaggle2019.audio_train_curated", "FSDKaggle2019.audio_train_noisy",
              "FSDKaggle2019.audio_test", "FSDKaggle2019.meta"),
    required=("FSDKaggle2019.audio_train_curated", "FSDKaggle2019.audio_train_noisy", "FSDKaggle2019.audio_test",
              "FSDKaggle2019.meta/train_curated_post_competition.csv",
              "FSDKaggle2019.meta/train_noisy_post_competition.csv",
              "FSDKaggle2019.meta/test_post_competition_scoring_clips.csv",
              "FSDKaggle2019.meta/vocabulary.csv"),
)
DATASETS = {d.name: d for d in (FSDKAGGLE2019,)}


class FetchError(Exception):
    """A download, checksum or archive problem; the message names the file and what went wrong."""


class ChecksumError(FetchError):
    pass


class DownloadInterrupted(FetchError):
    """The transfer stopped early; the .part file is kept and the next attempt resumes it."""


# ---------------------------------------------------------------------------------------- metadata

@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    size: int
    algorithm: str  # hashlib name, e.g. "md5"
    digest: str  # lower-case hex


def read_record(record_url: str, *, timeout: float = 60.0) -> dict:
    """The record's metadata JSON (any URL urllib opens, including file://)."""
    req = urllib.request.Request(record_url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise FetchError(f"{record_url}: the record's metadata could not be read: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{record_url}: the record's metadata could not be read: {getattr(e, 'reason', e)}") from e
    try:
        return json.loads(body)
    except ValueError as e:
        raise FetchError(f"{record_url}: the record's metadata is not JSON ({e})") from e


def record_files(record: dict, record_url: str) -> list[RemoteFile]:
    """The files a Zenodo record lists, in the REST API's format.

    Accepts the `/api/records/<id>` format (`files`: a list of {key, size, checksum "md5:<hex>",
    links.self}), the older one (filename, filesize, bare hex checksum, links.download) and the
    InvenioRDM one (`files.entries`, links.content). Relative links are resolved against the record URL."""
    files = record.get("files")
    if isinstance(files, dict):
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if not isinstance(files, list) or not files:
        raise FetchError(f"{record_url}: the record's metadata lists no files (no 'files' entries)")
    out, seen = [], set()
    for i, f in enumerate(files):
        name = f.get("key") or f.get("filename")
        if not name:
            raise FetchError(f"{record_url}: file entry {i} has no name ('key')")
        if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise FetchError(f"{record_url}: file name {name!r} is not a plain file name; refusing to write it")
        if name in seen:
            raise FetchError(f"{record_url}: file {name} is listed twice")
        seen.add(name)
        links = f.get("links") or {}
        url = links.get("self") or links.get("content") or links.get("download")
        if not url:
            raise FetchError(f"{record_url}: file {name} has no download link (links.self)")
        size = f.get("size", f.get("filesize"))
        if not isinstance(size, int) or size < 0:
            raise FetchError(f"{record_url}: file {name} has no valid size ({size!r})")
        checksum = f.get("checksum")
        if not checksum:
            raise FetchError(f"{record_url}: file {name} has no published checksum; refusing an unverifiable download")
        algorithm, _, digest = checksum.rpartition(":")
        algorithm = (algorithm or "md5").lower()
        if algorithm not in hashlib.algorithms_available or not re.fullmatch(r"[0-9a-fA-F]+", digest):
            raise FetchError(f"{record_url}: file {name} has an unusable checksum {checksum!r}")
        out.append(RemoteFile(name, urllib.parse.urljoin(record_url, url), size, algorithm, digest.lower()))
    return out


_PART = re.compile(r"^(?P<stem>.+)\.z(?P<num>\d{2,})$")


def group_archives(files: list[RemoteFile]) -> tuple[dict[str, list[RemoteFile]], list[RemoteFile]]:
    """Archives by name (without .zip), each as its list of disks in order (.z01, .z02, … then .zip),
    and the other files. A split archive whose .zip or one of whose parts is missing is an error."""
    zips = {f.name[:-4]: f for f in files if f.name.lower().endswith(".zip")}
    parts: dict[str, dict[int, RemoteFile]] = {}
    others = []
    for f in files:
        m = _PART.match(f.name)
        if m:
            parts.setdefault(m["stem"], {})[int(m["num"])] = f
        elif not f.name.lower().endswith(".zip"):
            others.append(f)
    groups = {}
    for stem, z in zips.items():
        nums = parts.pop(stem, {})
        missing = sorted(set(range(1, max(nums, default=0) + 1)) - set(nums))
        if missing:
            raise FetchError(f"split archive {stem}: part(s) {', '.join(f'.z{n:02d}' for n in missing)} "
                             f"missing from the record")
        groups[stem] = [nums[n] for n in sorted(nums)] + [z]
    for stem, nums in parts.items():
        raise FetchError(f"split archive {stem}: the record has its parts "
                         f"({', '.join(f.name for f in nums.values())}) but not its last disk {stem}.zip")
    return groups, others


# ---------------------------------------------------------------------------------------- download

def download(rf: RemoteFile, downloads: Path, *, retries: int = 3, retry_wait: float = 5.0,
             timeout: float = 60.0) -> tuple[Path, bool]:
    """Make `downloads/<name>` a verified copy of `rf`; returns (path, whether anything was fetched).

    A file already under its final name was verified when it got it and is only size-checked."""
    final = downloads / rf.name
    if final.exists():
        if final.stat().st_size == rf.size:
            log.info("%s: already downloaded and verified, skipped", rf.name)
            return final, False
        log.warning("%s: on disk with %d bytes but the record says %d; downloading it anew",
                    rf.name, final.stat().st_size, rf.size)
        final.unlink()
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / (rf.name + ".part")
    for attempt in range(retries + 1):
        try:
            digest = _download_once(rf, part, timeout=timeout)
            break
        except DownloadInterrupted as e:
            if attempt == retries:
                raise DownloadInterrupted(f"{e} (gave up after {retries} retr{'y' if retries == 1 else 'ies'}; "
                                          f"run the same command again to resume)") from e
            log.warning("%s; retry %d of %d in %.0f s, resuming", e, attempt + 1, retries, retry_wait)
            time.sleep(retry_wait)
    if digest != rf.digest:
        bad = downloads / (rf.name + ".bad")
        os.replace(part, bad)
        raise ChecksumError(f"{rf.name}: checksum mismatch: the record publishes {rf.algorithm}:{rf.digest}, "
                            f"the download has {rf.algorithm}:{digest}; moved it aside to {bad} "
                            f"(running again downloads it from scratch)")
    os.replace(part, final)
    log.info("%s: downloaded, %s verified", rf.name, rf.algorithm)
    return final, True


def _download_once(rf: RemoteFile, part: Path, *, timeout: float) -> str:
    """One attempt: resume `part` (or start it), return the hex digest of the complete file."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > rf.size:
        log.warning("%s: partial download is longer than the file (%d > %d bytes); starting over",
                    part, offset, rf.size)
        offset = 0
    h = hashlib.new(rf.algorithm)
    if offset:
        _hash_file(part, h, offset)
    if offset == rf.size:  # complete already (stopped between the last byte and the verification)
        return h.hexdigest()
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(rf.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the server will not resume this: start over
            log.warning("%s: the server refused to resume at byte %d (HTTP 416); starting over", rf.name, offset)
            part.unlink()
            return _download_once(rf, part, timeout=timeout)
        if e.code >= 500 or e.code in (408, 429):
            raise DownloadInterrupted(f"{rf.name}: HTTP {e.code} {e.reason} from {rf.url}") from e
        raise FetchError(f"{rf.name}: HTTP {e.code} {e.reason} from {rf.url}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadInterrupted(f"{rf.name}: cannot connect to {rf.url}: {getattr(e, 'reason', e)}") from e
    with resp:
        if offset and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise FetchError(f"{rf.name}: asked to resume at byte {offset}, the server answered with "
                                 f"Content-Range {resp.headers.get('Content-Range')!r}")
        elif resp.status == 200:
            if offset:
                log.info("%s: the server does not resume (HTTP 200 to a Range request); starting over", rf.name)
                offset, h = 0, hashlib.new(rf.algorithm)
        else:
            raise FetchError(f"{rf.name}: unexpected HTTP {resp.status} from {rf.url}")
        got = offset
        from fat.log import progress

        with open(part, "ab" if offset else "wb") as f, progress(total=rf.size, initial=offset, unit="B",
                                                                   unit_scale=True, unit_divisor=1024,
                                                                   desc=rf.name, leave=False) as bar:
            while got < rf.size:
                try:
                    chunk = resp.read(min(CHUNK, rf.size - got))
                except (http.client.HTTPException, OSError) as e:
                    raise DownloadInterrupted(f"{rf.name}: connection dropped after {got} of {rf.size} bytes "
                                              f"({e.__class__.__name__}); {part} is kept for resuming") from e
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if got < rf.size:
        raise DownloadInterrupted(f"{rf.name}: connection dropped after {got} of {rf.size} bytes; "
                                  f"{part} is kept for resuming")
    return h.hexdigest()


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _hash_file(path: Path, h, length: int | None = None) -> None:
    with open(path, "rb") as f:
        left = length
        while left is None or left > 0:
            b = f.read(CHUNK if left is None else min(CHUNK, left))
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)


# ---------------------------------------------------------------------------------------- split zips

# Signatures and fixed layouts of the zip format (PKWARE APPNOTE 4.3.6, 4.3.12, 4.3.14-16).
_SPAN_SIGS = (b"PK\x07\x08", b"PK00")  # the marker `zip -s` writes at the start of the first disk
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CDIR = struct.Struct("<4s6H3L5H2L")
_EOCD_SIG, _EOCD64_LOC_SIG, _EOCD64_SIG, _CDIR_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"PK\x01\x02"
_U16, _U32 = 0xFFFF, 0xFFFFFFFF


class _Concat(io.RawIOBase):
    """A read-only, seekable view of byte ranges of several files (and in-memory bytes) end to end."""

    def __init__(self, segments):  # [(path or bytes, start, length)]
        super().__init__()
        self._segments = [s for s in segments if s[2] > 0]
        self._starts, pos = [], 0
        for _, _, length in self._segments:
            self._starts.append(pos)
            pos += length
        self.size, self._pos, self._files = pos, 0, {}

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b):
        if self._pos >= self.size or not len(b):
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        src, start, length = self._segments[i]
        within = self._pos - self._starts[i]
        n = min(len(b), length - within)
        if isinstance(src, (bytes, bytearray)):
            b[:n] = src[within:within + n]
        else:
            f = self._files.get(src) or self._files.setdefault(src, open(src, "rb"))
            f.seek(start + within)
            n = f.readinto(memoryview(b)[:n])
            if not n:
                raise FetchError(f"{src}: shorter than expected (truncated while being read?)")
        self._pos += n
        return n

    def pread(self, pos: int, n: int) -> bytes:
        """Exactly the `n` bytes at `pos` (fewer only at the end), across segment boundaries."""
        self.seek(pos)
        out = bytearray()
        while len(out) < n:
            b = self.read(n - len(out))
            if not b:
                break
            out += b
        return bytes(out)

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()
        super().close()


def open_split_zip(parts: list[Path]) -> zipfile.ZipFile:
    """Open a split ("spanned") zip archive — disks `.z01 … .zNN` then `.zip`, in that order — as one
    zipfile.ZipFile, without writing a joined copy to disk.

    Concatenating the disks is not enough: `zip -s` records, for every member, the disk its local
    header starts on and an offset relative to the start of that disk, and likewise for the central
    directory; Python's zipfile supports neither (it rejects multi-disk zip64 archives outright and
    misplaces members of the others). So this reads the central directory, rewrites every entry to
    disk 0 with its absolute offset in the concatenation (through the zip64 extra field when the offset
    needs 64 bits), and presents: the disks end to end (minus the leading split marker, as `zip -s 0`
    does), then the new central directory and end records. A one-disk list is an ordinary zip."""
    parts = [Path(p) for p in parts]
    if len(parts) == 1:
        return zipfile.ZipFile(parts[0])
    stream = io.BufferedReader(joined_view(parts), buffer_size=CHUNK)
    try:
        return _ClosingZipFile(stream)
    except BaseException:
        stream.close()
        raise


class _ClosingZipFile(zipfile.ZipFile):
    """A ZipFile that closes the stream it was given when it closes (zipfile leaves that to the caller)."""

    def close(self):
        stream = self.fp
        try:
            super().close()
        finally:
            if stream is not None:
                stream.close()


def join_split_zip(parts: list[Path], out: Path) -> Path:
    """Write the single-file (one-disk) equivalent of a split archive to `out`, atomically."""
    from fat.io import atomic_path

    with joined_view([Path(p) for p in parts]) as src, atomic_path(out) as tmp, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return out


def joined_view(parts: list[Path]) -> _Concat:
    """The byte stream of the one-disk archive equivalent to the split archive `parts` (see open_split_zip)."""
    sizes = [p.stat().st_size for p in parts]
    with open(parts[0], "rb") as f:
        skip = 4 if f.read(4) in _SPAN_SIGS else 0
    # disk_start[d]: where disk d's byte 0 lands in the joined stream (disk 0 loses its split marker)
    disk_start = [sum(sizes[:d]) - skip for d in range(len(parts))]
    raw = _Concat([(p, skip if d == 0 else 0, s - (skip if d == 0 else 0)) for d, (p, s) in enumerate(zip(parts, sizes))])
    name = parts[-1]
    try:
        n_entries, cd_size, cd_start, comment = _read_end_records(raw, disk_start, name, len(parts))
        if cd_start + cd_size > raw.size:
            raise FetchError(f"{name}: its central directory ends past the end of the last disk; "
                             f"is one of the {len(parts)} parts truncated?")
        cd = raw.pread(cd_start, cd_size)
        new_cd = _rebase_central_directory(cd, n_entries, disk_start, cd_start, name)
    finally:
        raw.close()
    end = _end_records(n_entries, len(new_cd), cd_start, comment)
    segs = [(p, skip if d == 0 else 0, s - (skip if d == 0 else 0)) for d, (p, s) in enumerate(zip(parts, sizes))]
    data, left = [], cd_start  # the members' bytes: everything before the old central directory
    for p, start, length in segs:
        if left <= 0:
            break
        data.append((p, start, min(length, left)))
        left -= length
    return _Concat(data + [(new_cd + end, 0, len(new_cd) + len(end))])


def _read_end_records(raw: _Concat, disk_start: list[int], name: Path, n_parts: int):
    size = raw.size
    tail_len = min(size, _EOCD.size + _U16)
    tail = raw.pread(size - tail_len, tail_len)
    i = tail.rfind(_EOCD_SIG)
    while i >= 0:
        rec = _EOCD.unpack_from(tail, i)
        if i + _EOCD.size + rec[7] == len(tail):
            break
        i = tail.rfind(_EOCD_SIG, 0, i)
    if i < 0:
        raise FetchError(f"{name}: no zip end-of-central-directory record; is it the last disk of the archive?")
    _, disk, cd_disk, _, n_entries, cd_size, cd_offset, clen = _EOCD.unpack_from(tail, i)
    comment = tail[i + _EOCD.size:i + _EOCD.size + clen]
    eocd_pos = size - tail_len + i
    if eocd_pos >= _EOCD64_LOCATOR.size:
        loc = _EOCD64_LOCATOR.unpack(raw.pread(eocd_pos - _EOCD64_LOCATOR.size, _EOCD64_LOCATOR.size))
        if loc[0] == _EOCD64_LOC_SIG:
            _, z64_disk, z64_offset, total_disks = loc
            if z64_disk >= n_parts:
                raise FetchError(f"{name}: its zip64 end record is on disk {z64_disk + 1}, "
                                 f"but only {n_parts} parts were given")
            rec = _EOCD64.unpack(raw.pread(disk_start[z64_disk] + z64_offset, _EOCD64.size))
            if rec[0] != _EOCD64_SIG:
                raise FetchError(f"{name}: its zip64 end-of-central-directory record is not where the locator says")
            _, _, _, _, disk, cd_disk, _, n_entries, cd_size, cd_offset = rec
    if disk + 1 != n_parts and disk != 0:  # disk 0: a plain zip cut into pieces; offsets are already global
        raise FetchError(f"{name}: the archive has {disk + 1} disks (.z01 … .z{disk:02d} + .zip) "
                         f"but {n_parts} parts were given")
    if cd_disk >= n_parts:
        raise FetchError(f"{name}: its central directory starts on disk {cd_disk + 1}, past the {n_parts} parts")
    return n_entries, cd_size, disk_start[cd_disk] + cd_offset, comment


def _rebase_central_directory(cd: bytes, n_entries: int, disk_start: list[int], data_end: int, name: Path) -> bytes:
    out, pos = bytearray(), 0
    for k in range(n_entries):
        if cd[pos:pos + 4] != _CDIR_SIG:
            raise FetchError(f"{name}: central directory entry {k + 1} of {n_entries} is corrupt")
        f = list(_CDIR.unpack_from(cd, pos))
        nlen, xlen, clen = f[10], f[11], f[12]
        fname = cd[pos + _CDIR.size:pos + _CDIR.size + nlen]
        extra = cd[pos + _CDIR.size + nlen:pos + _CDIR.size + nlen + xlen]
        comment = cd[pos + _CDIR.size + nlen + xlen:pos + _CDIR.size + nlen + xlen + clen]
        pos += _CDIR.size + nlen + xlen + clen
        others, z64 = bytearray(), b""
        j = 0
        while j + 4 <= len(extra):
            tag, ln = struct.unpack_from("<2H", extra, j)
            if tag == 0x0001:
                z64 = extra[j + 4:j + 4 + ln]
            else:
                others += extra[j:j + 4 + ln]
            j += 4 + ln
        # Zip64 extra field: the 64-bit values of those header fields that hold their 0xFF… marker,
        # in the order uncompressed size, compressed size, header offset (8 bytes each), disk (4 bytes).
        values, q = {}, 0
        for key, index, width in (("usize", 9, 8), ("csize", 8, 8), ("offset", 16, 8), ("disk", 13, 4)):
            values[key] = f[index]
            if f[index] == (_U16 if key == "disk" else _U32):
                if q + width > len(z64):
                    raise FetchError(f"{name}: member {fname!r} lacks its zip64 {key}")
                values[key] = int.from_bytes(z64[q:q + width], "little")
                q += width
        disk, offset = values["disk"], values["offset"]
        if disk >= len(disk_start):
            raise FetchError(f"{name}: member {fname!r} starts on disk {disk + 1}, past the {len(disk_start)} parts given")
        absolute = disk_start[disk] + offset
        if not 0 <= absolute < data_end:
            raise FetchError(f"{name}: member {fname!r} points outside the archive's data (offset {absolute})")
        new_z64 = b""
        for index, value in ((9, values["usize"]), (8, values["csize"]), (16, absolute)):
            if value >= _U32:
                new_z64 += struct.pack("<Q", value)
            f[index] = min(value, _U32)
        f[13] = 0
        if new_z64:
            others += struct.pack("<2H", 0x0001, len(new_z64)) + new_z64
            f[2] = max(f[2], 45)  # version needed to extract: 4.5 (zip64)
        f[11] = len(others)
        out += _CDIR.pack(*f) + fname + others + comment
    return bytes(out)


def _end_records(n_entries: int, cd_size: int, cd_start: int, comment: bytes, zip64: bool = False) -> bytes:
    """End of central directory record, preceded by the zip64 ones when a value needs them (or `zip64`)."""
    out = b""
    if zip64 or n_entries >= _U16 or cd_size >= _U32 or cd_start >= _U32:
        eocd64_pos = cd_start + cd_size
        out += _EOCD64.pack(_EOCD64_SIG, _EOCD64.size - 12, 45, 45, 0, 0, n_entries, n_entries, cd_size, cd_start)
        out += _EOCD64_LOCATOR.pack(_EOCD64_LOC_SIG, 0, eocd64_pos, 1)
    out += _EOCD.pack(_EOCD_SIG, 0, 0, min(n_entries, _U16), min(n_entries, _U16), min(cd_size, _U32),
                      min(cd_start, _U32), len(comment)) + comment
    return out


# ---------------------------------------------------------------------------------------- unpacking

def check_members(zf: zipfile.ZipFile, name: str) -> None:
    """Refuse an archive with a member that would be written outside the target directory."""
    for info in zf.infolist():
        n = info.filename.replace("\\", "/")
        if n.startswith("/") or re.match(r"^[A-Za-z]:", n) or ".." in n.split("/"):
            raise FetchError(f"{name}: member {info.filename!r} would be written outside the target directory "
                             f"(absolute path or '..'); refusing to unpack this archive")


def unpack(parts: list[Path], target: Path) -> Path:
    """Unpack the (possibly split) archive `parts` into `target` atomically.

    When every member sits under one top folder named like `target` (as in FSDKaggle2019's archives),
    that folder becomes `target`; otherwise the members go directly under it."""
    from fat.io import atomic_path
    from fat.log import progress

    name = parts[-1].name
    try:
        zf = open_split_zip(parts)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{name}: not a valid zip archive ({e})") from e
    with zf, atomic_path(target) as tmp:
        check_members(zf, name)
        work = tmp.parent / "unpacked"
        members = zf.infolist()
        with progress(total=sum(i.file_size for i in members), unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"unpack {name}", leave=False) as bar:
            for info in members:
                try:
                    zf.extract(info, work)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise FetchError(f"{name}: cannot unpack member {info.filename!r}: {e}") from e
                bar.update(info.file_size)
        work.mkdir(exist_ok=True)
        top = list(work.iterdir())
        root = top[0] if len(top) == 1 and top[0].is_dir() and top[0].name == target.name else work
        os.replace(root, tmp)
    return target


# ---------------------------------------------------------------------------------------- the command

def fetch(dataset: str | Dataset, dest: str | Path, *, record_url: str | None = None, keep_archives: bool = False,
          retries: int = 3, retry_wait: float = 5.0, timeout: float = 60.0) -> dict:
    """Download, verify and unpack a dataset's record into `dest`; returns a summary.

    Per archive: skipped whole if `dest/<archive>/` exists (unpacking is atomic, so it is complete);
    otherwise its files are downloaded (verified ones skipped), unpacked, and deleted from
    `dest/downloads/` unless `keep_archives`. A failing archive does not stop the others; all failures
    are raised together at the end as one FetchError."""
    ds = DATASETS[dataset] if isinstance(dataset, str) else dataset
    dest = Path(dest).expanduser()
    url = record_url or ds.record_url
    downloads = dest / "downloads"
    record = read_record(url, timeout=timeout)
    files = record_files(record, url)
    groups, others = group_archives(files)
    missing = [a for a in ds.archives if a not in groups]
    if missing:
        raise FetchError(f"{url}: the record lacks the archive(s) {', '.join(a + '.zip' for a in missing)} "
                         f"that {ds.name} needs (it lists {', '.join(f.name for f in files)})")
    from fat.io import write_json

    write_json(downloads / "record.json", record)
    total = sum(f.size for f in files)
    log.info("%s: %d files, %s in all, into %s", url, len(files),
             f"{total / 1e9:.1f} GB" if total >= 1e9 else f"{total / 1e6:.1f} MB", dest)
    summary = {"downloaded": [], "skipped": [], "unpacked": [], "already_unpacked": [], "errors": []}
    kw = dict(retries=retries, retry_wait=retry_wait, timeout=timeout)
    for stem, group in groups.items():
        target = dest / stem
        if target.is_dir():
            log.info("%s: already unpacked in %s, skipped", stem, target)
            summary["already_unpacked"].append(stem)
            continue
        for stale in dest.glob(f".{stem}.*.tmp"):  # left by an unpack that was killed
            shutil.rmtree(stale, ignore_errors=True)
        try:
            paths = []
            for rf in group:
                path, fetched = download(rf, downloads, **kw)
                paths.append(path)
                summary["downloaded" if fetched else "skipped"].append(rf.name)
            log.info("%s: unpacking %d file(s) into %s", stem, len(paths), target)
            unpack(paths, target)
            summary["unpacked"].append(stem)
            if not keep_archives:
                for p in paths:
                    p.unlink()
        except FetchError as e:
            log.error("%s", e)
            summary["errors"].append(str(e))
    for rf in others:
        try:
            _, fetched = download(rf, downloads, **kw)
            summary["downloaded" if fetched else "skipped"].append(rf.name)
        except FetchError as e:
            log.error("%s", e)
            summary["errors"].append(str(e))
    if summary["errors"]:
        raise FetchError(f"{len(summary['errors'])} problem(s) fetching {ds.name} into {dest}:\n  "
                         + "\n  ".join(summary["errors"]))
    absent = [r for r in ds.required if not (dest / r).exists()]
    if absent:
        raise FetchError(f"{dest}: unpacked, but the expected {ds.name} layout lacks: {', '.join(absent)}")
    return summary


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `fat fetch` on the CLI's subparsers."""
    p = sub.add_parser(
        "fetch", help="download a real dataset (FSDKaggle2019) from Zenodo: resumable, checksum-verified, unpacked",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Download the files of the dataset's Zenodo record into DEST/downloads/ (progress bar; an interrupted
download resumes where it stopped, on the next retry or the next run), verify each file's checksum
against the record's metadata, join the split noisy archive (.z01 … .z06 + .zip) and unpack every
archive into DEST (FSDKaggle2019.audio_train_curated/, FSDKaggle2019.audio_train_noisy/,
FSDKaggle2019.audio_test/, FSDKaggle2019.meta/, FSDKaggle2019.doc/). Running it again skips what is
done. FSDKaggle2019 is about 100 hours of 44.1 kHz 16-bit audio: over 30 GB of archives (most of it
the noisy set), about as much unpacked; each archive is deleted once unpacked (unless
--keep-archives), so the peak is roughly the unpacked size plus the noisy archive.

Optional: the pipeline never downloads anything; afterwards set `data.source: DEST` in params.yaml
and run `dvc repro`.""")
    p.add_argument("dataset", choices=sorted(DATASETS), metavar="DATASET",
                   help=f"dataset to fetch: {', '.join(sorted(DATASETS))}")
    p.add_argument("dest", type=Path, metavar="DEST", help="directory to download and unpack into (created if missing)")
    p.add_argument("--record-url", default=None, metavar="URL",
                   help="URL of the record's metadata JSON in the Zenodo REST API format "
                        f"(default: {FSDKAGGLE2019.record_url})")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the downloaded archives in DEST/downloads/ after unpacking (default: delete them)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="times to resume a download whose connection drops (default: %(default)s)")
    p.add_argument("--retry-wait", type=float, default=5.0, metavar="SECONDS",
                   help="pause before each retry (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="network timeout of a connection or a read (default: %(default)s)")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args) -> int:
    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    try:
        summary = fetch(args.dataset, args.dest, record_url=args.record_url, keep_archives=args.keep_archives,
                        retries=args.retries, retry_wait=args.retry_wait, timeout=args.timeout)
    except FetchError as e:
        print(f"fat fetch: error: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"{args.dataset}: {len(summary['downloaded'])} file(s) downloaded, {len(summary['skipped'])} already "
          f"there; {len(summary['unpacked'])} archive(s) unpacked, {len(summary['already_unpacked'])} already "
          f"unpacked, in {args.dest}")
    print(f"Next: set `data.source: {args.dest}` in params.yaml (or `dvc exp run -S data.source={args.dest}`), "
          f"then run `dvc repro`; `fat preset fat2019` gives the competition's settings.")
    return 0
