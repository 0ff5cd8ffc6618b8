"""`fat fetch`: download, resume, checksum verification, split-archive joining and unpacking, end to end
against a fake Zenodo served by a local HTTP server on 127.0.0.1 (never the network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import shutil
import struct
import subprocess
import threading
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fat.tools import cli, fetch

CUR, NOISY, TEST, META, DOC = (f"FSDKaggle2019.{s}" for s in ("audio_train_curated", "audio_train_noisy",
                                                               "audio_test", "meta", "doc"))
META_CSVS = ("train_curated_post_competition.csv", "train_noisy_post_competition.csv",
             "test_post_competition_scoring_clips.csv", "vocabulary.csv")


# ------------------------------------------------------------------------------------------ fixtures

def wav_bytes(seed: int, n: int = 1500) -> bytes:
    """A tiny 16-bit mono wav of noise (incompressible, so archive sizes stay predictable)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.random.default_rng(seed).integers(-3000, 3000, n, dtype=np.int16).tobytes())
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def span(data: bytes, part_size: int) -> list[bytes]:
    """Cut a one-disk zip into a genuine split archive laid out as `zip -s` lays it out: the split
    marker PK\\x07\\x08 at the start of the first disk, the members' bytes cut into disks of
    `part_size`, and on the last disk the central directory whose entries give each member's disk
    number and its offset relative to that disk, then an end record naming the disks. Plain
    concatenation of these parts is NOT a valid zip (the offsets are per disk)."""
    eocd = data.rindex(b"PK\x05\x06")
    _, _, _, _, n, cd_size, cd_off, _ = struct.unpack_from("<4s4H2LH", data, eocd)
    stream = b"PK\x07\x08" + data[:cd_off]
    disks = [stream[i:i + part_size] for i in range(0, len(stream), part_size)]
    cd, p = bytearray(), cd_off
    for _ in range(n):
        f = list(struct.unpack_from("<4s6H3L5H2L", data, p))
        length = 46 + f[10] + f[11] + f[12]
        f[13], f[16] = divmod(f[16] + 4, part_size)  # disk number, offset within that disk
        cd += struct.pack("<4s6H3L5H2L", *f) + data[p + 46:p + length]
        p += length
    last = len(disks) - 1
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", last, last, n, n, len(cd), len(disks[-1]), 0)
    return disks[:-1] + [disks[-1] + bytes(cd) + end]


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def fake_fsdkaggle2019() -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
    """The record's files (name -> bytes) and what each archive holds (stem -> member -> bytes)."""
    contents = {
        CUR: {f"{CUR}/c{i}.wav": wav_bytes(i) for i in range(3)},
        NOISY: {f"{NOISY}/n{i}.wav": wav_bytes(10 + i, 2500) for i in range(4)},
        TEST: {f"{TEST}/t{i}.wav": wav_bytes(20 + i) for i in range(2)},
        META: {f"{META}/{name}": f"fname,labels\nx.wav,Bark\n# {name}\n".encode() for name in META_CSVS},
        DOC: {"README.md": b"# FSDKaggle2019 (fake)\n", "LICENSE-DATASET": b"CC-BY\n"},  # flat: no top folder
    }
    files = {f"{stem}.zip": make_zip(m) for stem, m in contents.items() if stem != NOISY}
    noisy = span(make_zip(contents[NOISY]), 3000)
    assert len(noisy) >= 4
    for i, part in enumerate(noisy[:-1], 1):
        files[f"{NOISY}.z{i:02d}"] = part
    files[f"{NOISY}.zip"] = noisy[-1]
    return files, contents


class FakeZenodo:
    """Zenodo's REST API, enough of it: GET /api/records/<id> (metadata JSON) and
    GET /api/records/<id>/files/<name>/content (with Range support). Files in `drop_first` are cut off
    half way through their first transfer; files in `ignore_range` are always sent whole (HTTP 200).
    Every request is logged. Bounded: at most 300 requests, and a watchdog stops it after 120 s."""

    def __init__(self):
        self.records: dict[str, list[tuple[str, bytes, str]]] = {}
        self.drop_first: set[str] = set()
        self.ignore_range: set[str] = set()
        self.log: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with outer.lock:
                    entry = {"path": self.path, "range": self.headers.get("Range"), "sent": 0, "status": None}
                    outer.log.append(entry)
                    too_many = len(outer.log) > 300
                if too_many:
                    return self._send(503, b"request budget exhausted", entry)
                m = re.fullmatch(r"/api/records/(\w+)(?:/files/([^/]+)/content)?", self.path)
                if not m or m[1] not in outer.records:
                    return self._send(404, b"not found", entry)
                files = outer.records[m[1]]
                if m[2] is None:
                    base = f"http://127.0.0.1:{self.server.server_address[1]}/api/records/{m[1]}"
                    meta = {"id": m[1], "files": [
                        {"id": str(i), "key": n, "size": len(b), "checksum": f"md5:{c}",
                         "links": {"self": f"{base}/files/{n}/content"}} for i, (n, b, c) in enumerate(files)]}
                    return self._send(200, json.dumps(meta).encode(), entry, "application/json")
                name = m[2]
                entry["file"] = name
                body = next((b for n, b, _ in files if n == name), None)
                if body is None:
                    return self._send(404, b"no such file", entry)
                start = 0
                rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if rng and name not in outer.ignore_range:
                    start = int(rng[1])
                    if start >= len(body):
                        return self._send(416, b"", entry)
                with outer.lock:
                    drop = name in outer.drop_first
                    outer.drop_first.discard(name)
                status = 206 if start else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                payload = body[start:start + (len(body) - start) // 2] if drop else body[start:]
                self.wfile.write(payload)
                entry.update(sent=len(payload), status=status)
                if drop:
                    self.close_connection = True  # hang up with the rest of Content-Length unsent

            def _send(self, status, body, entry, ctype="text/plain"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                entry.update(sent=len(body), status=status)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/records/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.watchdog = threading.Timer(120, self.server.shutdown)

    def add(self, rid: str, files: dict[str, bytes], wrong_checksum: str | None = None) -> str:
        self.records[rid] = [(n, b, md5(b"not " + b) if n == wrong_checksum else md5(b)) for n, b in files.items()]
        return self.url + rid

    def gets(self, name: str | None = None) -> list[dict]:
        with self.lock:
            return [e for e in self.log if "file" in e and (name is None or e["file"] == name)]


@pytest.fixture
def zenodo():
    z = FakeZenodo()
    z.thread.start()
    z.watchdog.start()
    try:
        yield z
    finally:
        z.watchdog.cancel()
        z.server.shutdown()
        z.server.server_close()
        z.thread.join(timeout=10)


def run(url, dest, **kw):
    return fetch.fetch("fsdkaggle2019", dest, record_url=url, retry_wait=0, timeout=10, **kw)


def assert_tree(dest: Path, contents):
    for stem, members in contents.items():
        for member, data in members.items():
            rel = member if member.startswith(stem + "/") else f"{stem}/{member}"
            assert (dest / rel).read_bytes() == data, rel
        got = sorted(p.relative_to(dest / stem).as_posix() for p in (dest / stem).rglob("*") if p.is_file())
        want = sorted(m.split("/", 1)[1] if m.startswith(stem + "/") else m for m in members)
        assert got == want, stem


# ------------------------------------------------------------------------------------------ end to end

def test_fetch_end_to_end_resumes_a_dropped_download_and_unpacks_the_zenodo_layout(zenodo, tmp_path):
    files, contents = fake_fsdkaggle2019()
    url = zenodo.add("3612637", files)
    zenodo.drop_first.add(f"{CUR}.zip")
    dest = tmp_path / "fsd"
    summary = run(url, dest)

    assert_tree(dest, contents)  # the split noisy archive included
    for name in META_CSVS:
        assert (dest / META / name).is_file()
    assert not summary["errors"] and set(summary["unpacked"]) == {CUR, NOISY, TEST, META, DOC}
    assert sorted(summary["downloaded"]) == sorted(files)
    # the dropped transfer was resumed, not restarted: a Range request from the byte where it stopped
    cur = zenodo.gets(f"{CUR}.zip")
    size = len(files[f"{CUR}.zip"])
    assert len(cur) == 2 and cur[0]["range"] is None and cur[0]["sent"] == size // 2
    assert cur[1]["range"] == f"bytes={size // 2}-" and cur[1]["status"] == 206
    assert sum(e["sent"] for e in cur) < 2 * size
    # archives are deleted once unpacked (no --keep-archives); nothing half-done is left behind
    left = sorted(p.name for p in (dest / "downloads").iterdir())
    assert left == ["record.json"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_rerun_skips_verified_downloads_and_unpacked_archives(zenodo, tmp_path):
    files, contents = fake_fsdkaggle2019()
    url = zenodo.add("3612637", files)
    dest = tmp_path / "fsd"
    run(url, dest, keep_archives=True)
    assert sorted(p.name for p in (dest / "downloads").iterdir()) == sorted(list(files) + ["record.json"])
    n = len(zenodo.gets())
    assert n == len(files)

    summary = run(url, dest, keep_archives=True)  # everything unpacked: no file is requested again
    assert len(zenodo.gets()) == n
    assert sorted(summary["already_unpacked"]) == sorted([CUR, NOISY, TEST, META, DOC])

    shutil.rmtree(dest / NOISY)  # unpacked tree gone, verified archives still there: unpack again, no GET
    (dest / f".{NOISY}.killed.tmp" / NOISY).mkdir(parents=True)  # what a killed unpack leaves behind
    summary = run(url, dest)
    assert not (dest / f".{NOISY}.killed.tmp").exists()
    assert len(zenodo.gets()) == n
    assert summary["unpacked"] == [NOISY] and len(summary["skipped"]) == sum(f.startswith(NOISY) for f in files)
    assert_tree(dest, contents)
    assert not any(p.name.startswith(NOISY) for p in (dest / "downloads").iterdir())  # deleted this time


def test_wrong_checksum_fails_naming_the_file_and_leaves_no_complete_looking_file(zenodo, tmp_path):
    files, contents = fake_fsdkaggle2019()
    url = zenodo.add("3612637", files, wrong_checksum=f"{META}.zip")
    dest = tmp_path / "fsd"
    with pytest.raises(fetch.FetchError) as e:
        run(url, dest)
    msg = str(e.value)
    actual, published = md5(files[f"{META}.zip"]), md5(b"not " + files[f"{META}.zip"])
    assert f"{META}.zip: checksum mismatch" in msg and f"md5:{published}" in msg and f"md5:{actual}" in msg
    assert not (dest / "downloads" / f"{META}.zip").exists()
    assert not (dest / "downloads" / f"{META}.zip.part").exists()
    assert (dest / "downloads" / f"{META}.zip.bad").read_bytes() == files[f"{META}.zip"]  # kept aside for a look
    assert not (dest / META).exists()
    assert (dest / CUR).is_dir() and (dest / NOISY).is_dir()  # the other archives were still fetched

    zenodo.records["3612637"] = [(n, b, md5(b)) for n, b in files.items()]  # the record is fixed
    run(url, dest)
    assert_tree(dest, contents)
    assert len(zenodo.gets(f"{META}.zip")) == 2  # downloaded anew, from zero
    assert zenodo.gets(f"{META}.zip")[1]["range"] is None


def test_dropped_connection_without_retries_keeps_the_part_file_and_the_next_run_resumes(zenodo, tmp_path):
    files, contents = fake_fsdkaggle2019()
    url = zenodo.add("3612637", files)
    name = f"{NOISY}.z02"
    zenodo.drop_first.add(name)
    dest = tmp_path / "fsd"
    with pytest.raises(fetch.FetchError) as e:
        run(url, dest, retries=0)
    size, half = len(files[name]), len(files[name]) // 2
    assert f"{name}: connection dropped after {half} of {size} bytes" in str(e.value)
    assert (dest / "downloads" / f"{name}.part").read_bytes() == files[name][:half]
    assert not (dest / NOISY).exists() and (dest / CUR).is_dir()

    run(url, dest, retries=0)
    assert_tree(dest, contents)
    assert [g["range"] for g in zenodo.gets(name)] == [None, f"bytes={half}-"]
    assert sum(g["sent"] for g in zenodo.gets(name)) == size
    assert len(zenodo.gets(f"{NOISY}.z01")) == 1  # verified before the failure: not fetched again


def test_server_that_ignores_range_restarts_the_download_from_zero(zenodo, tmp_path):
    files, contents = fake_fsdkaggle2019()
    url = zenodo.add("3612637", files)
    zenodo.drop_first.add(f"{TEST}.zip")
    zenodo.ignore_range.add(f"{TEST}.zip")
    run(url, tmp_path / "fsd")
    assert_tree(tmp_path / "fsd", contents)
    got = zenodo.gets(f"{TEST}.zip")
    assert [g["range"] for g in got] == [None, f"bytes={len(files[f'{TEST}.zip']) // 2}-"]
    assert got[1]["status"] == 200  # answered with the whole file, which replaced the partial one


def test_member_escaping_the_target_directory_is_refused(zenodo, tmp_path):
    files, _ = fake_fsdkaggle2019()
    for bad in ("../evil.txt", "/tmp/evil.txt", f"{TEST}/../../evil.txt"):
        files[f"{TEST}.zip"] = make_zip({f"{TEST}/t0.wav": wav_bytes(0), bad: b"gotcha"})
        url = zenodo.add("3612637", files)
        dest = tmp_path / "fsd"
        with pytest.raises(fetch.FetchError) as e:
            run(url, dest)
        assert f"{TEST}.zip: member {bad!r} would be written outside the target directory" in str(e.value)
        assert not (dest / TEST).exists() and not list(tmp_path.rglob("evil.txt"))
        assert (dest / CUR).is_dir()
        shutil.rmtree(dest)


def test_record_lacking_an_archive_or_a_part_is_refused_before_downloading(zenodo, tmp_path):
    files, _ = fake_fsdkaggle2019()
    url = zenodo.add("nometa", {n: b for n, b in files.items() if n != f"{META}.zip"})
    with pytest.raises(fetch.FetchError, match=rf"lacks the archive\(s\) {re.escape(META)}\.zip"):
        run(url, tmp_path / "a")
    url = zenodo.add("nopart", {n: b for n, b in files.items() if n != f"{NOISY}.z02"})
    with pytest.raises(fetch.FetchError, match=rf"split archive {re.escape(NOISY)}: part\(s\) \.z02 missing"):
        run(url, tmp_path / "b")
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        run(zenodo.url + "nope", tmp_path / "c")
    assert zenodo.gets() == []


def test_cli_fetch_prints_the_next_step_and_reports_failures(zenodo, tmp_path, capsys):
    files, contents = fake_fsdkaggle2019()
    url = zenodo.add("3612637", files)
    dest = tmp_path / "fsd"
    assert cli.main(["fetch", "fsdkaggle2019", str(dest), "--record-url", url, "--retry-wait", "0"]) == 0
    out = capsys.readouterr().out
    assert f"data.source: {dest}" in out and "dvc repro" in out
    assert_tree(dest, contents)

    url = zenodo.add("bad", files, wrong_checksum=f"{DOC}.zip")
    assert cli.main(["fetch", "fsdkaggle2019", str(tmp_path / "x"), "--record-url", url, "--retry-wait", "0"]) == 1
    assert f"{DOC}.zip: checksum mismatch" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        cli.main(["fetch", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--record-url", "--keep-archives", "--retries", "data.source", "zenodo.org/api/records/3612637"):
        assert opt in help_text


# ------------------------------------------------------------------------------------------ metadata

def test_record_files_reads_the_zenodo_formats_and_rejects_unusable_entries():
    base = "https://example.org/api/records/1"
    new = {"files": [{"key": "a.zip", "size": 3, "checksum": "md5:ABCDEF", "links": {"self": "/api/f/a.zip"}}]}
    legacy = {"files": [{"filename": "a.zip", "filesize": 3, "checksum": "abcdef",
                         "links": {"download": "https://example.org/api/f/a.zip"}}]}
    rdm = {"files": {"enabled": True, "entries": {"a.zip": {"key": "a.zip", "size": 3, "checksum": "md5:abcdef",
                                                            "links": {"content": "https://example.org/api/f/a.zip"}}}}}
    for record in (new, legacy, rdm):
        assert fetch.record_files(record, base) == [
            fetch.RemoteFile("a.zip", "https://example.org/api/f/a.zip", 3, "md5", "abcdef")]
    bad = [({"files": []}, "lists no files"),
           ({"files": [{"key": "../x", "size": 1, "checksum": "md5:ab", "links": {"self": "u"}}]}, "not a plain file"),
           ({"files": [{"key": "x", "size": 1, "links": {"self": "u"}}]}, "x has no published checksum"),
           ({"files": [{"key": "x", "size": 1, "checksum": "md5:zz", "links": {"self": "u"}}]}, "unusable checksum"),
           ({"files": [{"key": "x", "checksum": "md5:ab", "links": {"self": "u"}}]}, "x has no valid size")]
    for record, message in bad:
        with pytest.raises(fetch.FetchError, match=message):
            fetch.record_files(record, base)


# ------------------------------------------------------------------------------------------ split archives

def write_parts(tmp_path: Path, stem: str, parts: list[bytes]) -> list[Path]:
    paths = [tmp_path / f"{stem}.z{i:02d}" for i in range(1, len(parts))] + [tmp_path / f"{stem}.zip"]
    for p, b in zip(paths, parts):
        p.write_bytes(b)
    return paths


def test_split_archive_reads_as_one_zip_though_plain_concatenation_does_not(tmp_path):
    members = {f"d/f{i}.wav": wav_bytes(i, 700 * (i + 1)) for i in range(6)} | {"d/empty.txt": b""}
    parts = write_parts(tmp_path, "s", span(make_zip(members), 2048))
    assert len(parts) > 4
    with zipfile.ZipFile(io.BytesIO(b"".join(p.read_bytes() for p in parts))) as naive:
        with pytest.raises((zipfile.BadZipFile, OSError, ValueError)):  # offsets are per disk
            [naive.read(n) for n in naive.namelist()]
    with fetch.open_split_zip(parts) as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == members
    joined = fetch.join_split_zip(parts, tmp_path / "joined.zip")
    with zipfile.ZipFile(joined) as zf:
        assert zf.testzip() is None and {n: zf.read(n) for n in zf.namelist()} == members
    assert not joined.read_bytes().startswith(b"PK\x07\x08")  # a one-disk zip does not keep the split marker

    with pytest.raises(fetch.FetchError, match=r"the archive has \d+ disks .* but \d+ parts were given"):
        fetch.open_split_zip(parts[:1] + parts[2:])


def test_zip64_end_records_written_for_the_joined_archive_are_read_back():
    data = make_zip({"a.txt": b"alpha", "b.txt": b"beta" * 100})
    eocd = data.rindex(b"PK\x05\x06")
    _, _, _, _, n, cd_size, cd_off, _ = struct.unpack_from("<4s4H2LH", data, eocd)
    z64 = data[:cd_off + cd_size] + fetch._end_records(n, cd_size, cd_off, b"", zip64=True)
    assert b"PK\x06\x06" in z64[cd_off + cd_size:]
    with zipfile.ZipFile(io.BytesIO(z64)) as zf:
        assert zf.read("b.txt") == b"beta" * 100 and zf.testzip() is None


@pytest.mark.skipif(shutil.which("zip") is None, reason="the `zip` command is not installed (apt-get install zip)")
@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_real_zip_s_split_archive_is_joined(tmp_path, zip64):
    """A genuine `zip -s 64k` archive, its central directory spanning two disks (900 entries); with
    `-fz`, one with zip64 end records, which Python's zipfile refuses outright for a split archive."""
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(900):
        (src / "many" / f"a_rather_long_member_name_{i:05d}.txt").write_bytes(b"x" * (i % 40))
    for i in range(3):
        (src / f"big{i}.bin").write_bytes(rng.bytes(50_000))
    out = tmp_path / "arch"
    out.mkdir()
    subprocess.run(["zip", "-q", "-r", "-s", "64k", *(["-fz"] if zip64 else []), str(out / "x.zip"), "."],
                   cwd=src, check=True)
    parts = sorted(out.glob("x.z[0-9]*")) + [out / "x.zip"]
    assert len(parts) >= 4
    tail = parts[-1].read_bytes()
    assert (b"PK\x06\x07" in tail) == zip64  # the zip64 end-of-central-directory locator
    if not zip64:
        cd_disk = struct.unpack_from("<4s4H2LH", tail, tail.rindex(b"PK\x05\x06"))[2]
        assert cd_disk < len(parts) - 1  # the central directory starts on an earlier disk than the last
    with fetch.open_split_zip(parts) as zf:
        files = [i for i in zf.infolist() if not i.is_dir()]
        assert len(files) == 903 and zf.testzip() is None
        for info in files:
            assert zf.read(info) == (src / info.filename).read_bytes()
    joined = fetch.join_split_zip(parts, tmp_path / "joined.zip")
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-tq", str(joined)], check=True, capture_output=True)
    target = fetch.unpack(parts, tmp_path / "unpacked")
    assert (target / "big2.bin").read_bytes() == (src / "big2.bin").read_bytes()
