"""Hypothesis strategies for the training API: hostile jobs, uploads and job paths.

:func:`make_data_root` lays out the server's ``--data-root`` with the files a hostile job
names: usable frames and labels, a header that announces a 12000 x 12000 image, a FIFO, a
symbolic link out of the root, a table that is not UTF-8, and files holding :data:`CANARY`
(inside the root and, in ``outside/``, next to it). No reply may ever quote the canary (file
contents are never quoted) and nothing may appear in ``outside/`` (writes stay in the jobs
folder): :func:`leaks` checks both.

Each strategy draws a list of :class:`~tests.support.fuzz_probes.Probe`, sent in order:

- :func:`uploads`: ``POST /v2/training/uploads`` with random bytes, image signatures followed
  by junk, real PNG files, a PNG announcing 12000 x 12000 pixels, odd file names, sent whole
  or in (tiny) chunks;
- :func:`jobs`: ``POST /v2/training/jobs`` with hostile JSON: odd names, paths in and out of
  the data root, upload ids real and not, settings of every wrong type and range;
- :func:`job_paths`: every job and upload path with odd names, methods and query strings
  (``package?id=`` pointing out of the jobs folder included).

An upload's id is the first 32 hex digits of the SHA-256 of its bytes, so a job can name an
upload sent earlier in the same example without reading the reply.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.support.fuzz_http import compose, escape, odd_segment
from tests.support.fuzz_json import deep_nesting, dumps, hostile_json, odd_text
from tests.support.fuzz_probes import Probe

__all__ = [
    "CANARY",
    "ESCAPING_IDS",
    "HOSTILE_FILES",
    "KEPT_JOB",
    "clean_up",
    "job_paths",
    "jobs",
    "keep_a_finished_job",
    "leaks",
    "make_data_root",
    "png",
    "png_bomb",
    "upload_id",
    "uploads",
]

#: Planted in files inside and outside the data root: no reply may ever hold it.
CANARY = "fuzz-canary-s3cr3t-7f3a"
#: A job the fuzzers leave in place (a finished one, when it could be trained).
KEPT_JOB = "fuzz-kept"
SETTINGS = (
    "network",
    "crop_size",
    "batch_size",
    "steps",
    "learning_rate",
    "schedule",
    "flips",
    "rotations",
    "colour_jitter",
    "loss",
    "gradient_clip",
    "residual",
    "seed",
    "checkpoint_interval",
    "keep_checkpoints",
    "validation_interval",
    "validation_crops",
    "contact_sheet_interval",
    "contact_sheet_samples",
    "device",
)


def png(width: int, height: int, *, seed: int = 0, channels: int = 3) -> bytes:
    """A real 8-bit PNG file of noise (channels 1, 3 or 4)."""
    colour = {1: 0, 3: 2, 4: 6}[channels]
    row = width * channels
    noise = bytes((seed * 7 + i * 31) % 256 for i in range(row * height))
    raw = b"".join(b"\0" + noise[y * row : (y + 1) * row] for y in range(height))
    return _png_file(width, height, colour, zlib.compress(raw))


def png_bomb(width: int = 12_000, height: int = 12_000) -> bytes:
    """A small PNG whose header announces ``width`` x ``height`` pixels (the data stops short)."""
    return _png_file(width, height, 2, zlib.compress(b"\0" * 4096))


def _png_file(width: int, height: int, colour: int, data: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def upload_id(data: bytes) -> str:
    """The id the server gives an upload of ``data``."""
    return hashlib.sha256(data).hexdigest()[:32]


def make_data_root(root: Path) -> Path:
    """Lay out a hostile data root at ``root`` (and ``outside/`` next to it); return ``root``."""
    outside = root.parent / "outside"
    for folder in (root / "pair", root / "labels" / "day", root / "labels" / "night", outside):
        folder.mkdir(parents=True, exist_ok=True)
    files = {
        "pair/in.png": png(16, 16, seed=1),
        "pair/target.png": png(16, 16, seed=2),
        "pair/wide.png": png(24, 16, seed=3),
        "labels/day/a.png": png(16, 16, seed=4),
        "labels/night/b.png": png(16, 16, seed=5),
        "values.csv": b"file,value\npair/in.png,0.5\npair/target.png,1.5\n",
        "bomb.png": png_bomb(),
        "secret.csv": f"file,value\npair/in.png,1\npair/target.png,{CANARY}\n".encode(),
        "secret.png": CANARY.encode(),
        "latin1.csv": b"file,value\n\xe9t\xe9.png,1\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (outside / "secret.csv").write_text(f"api_token,{CANARY}\n")
    (outside / "in.png").write_bytes(png(16, 16, seed=6))
    for link, target in (("escape.png", outside / "in.png"), ("escape", outside)):
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    if not (root / "fifo.png").exists():
        os.mkfifo(root / "fifo.png")
    return root


#: What a hostile job names, relative to the data root: each file of ``make_data_root`` that
#: must never be read whole, waited on, or quoted, and paths out of the root.
HOSTILE_FILES = (
    "bomb.png",
    "fifo.png",
    "escape.png",
    "escape/in.png",
    "escape",
    "secret.png",
    "secret.csv",
    "latin1.csv",
    "pair",
    "missing.png",
    "../outside/in.png",
    "../outside/secret.csv",
    "/dev/zero",
    "/proc/self/environ",
)
#: Export ids that point out of the jobs folder (``package?id=``), relative to the data root.
ESCAPING_IDS = ("../outside/victim", "../../outside/victim", "/outside/victim", "..", "")


def leaks(received: bytes, outside: Path) -> list[str]:
    """Problems of confinement: a reply quoting the canary, or a file written to ``outside``."""
    problems = []
    if CANARY.encode() in received:
        at = received.find(CANARY.encode())
        problems.append(
            f"leak: a reply quotes a file's contents: {received[max(0, at - 200) : at + 40]!r}"
        )
    extra = sorted(p.name for p in outside.iterdir()) if outside.is_dir() else []
    extra = [name for name in extra if name not in ("secret.csv", "in.png")]
    if extra:
        problems.append(f"write outside the jobs folder: {outside} now holds {extra}")
    return problems


def _paths(root: Path) -> st.SearchStrategy[str]:
    """Frame paths a job may name: inside the root, escaping it, devices, odd text."""
    outside = root.parent / "outside"
    inside = [
        "pair/in.png",
        "pair/target.png",
        "pair/wide.png",
        "bomb.png",
        "fifo.png",
        "secret.png",
        "escape.png",
        "escape/in.png",
        "pair",
        "missing.png",
        "../outside/in.png",
        "pair/../../outside/in.png",
    ]
    return st.one_of(
        st.sampled_from(inside).map(lambda rel: str(root / rel)),
        st.sampled_from(inside),
        st.sampled_from(
            [
                str(outside / "in.png"),
                str(outside / "secret.csv"),
                "/dev/zero",
                "/proc/self/environ",
                "/etc/passwd",
                str(root),
                "/",
            ]
        ),
        odd_text,
    )


def _frame(root: Path, ids: list[str]) -> st.SearchStrategy[Any]:
    upload = st.one_of(
        st.sampled_from(ids or ["0" * 32]),
        st.sampled_from(["0" * 32, "../" * 3 + "etc", "", "F" * 32]),
        odd_text,
    ).map(lambda identity: {"upload": identity})
    return st.one_of(_paths(root), upload, hostile_json(3))


def _settings() -> st.SearchStrategy[Any]:
    value = st.one_of(
        st.integers(-(2**64), 2**64),
        st.sampled_from([0, 1, 2, 8, 4096, 4097, 10**9]),
        st.floats(),
        st.booleans(),
        st.none(),
        odd_text,
        st.sampled_from(["small", "large", "cosine", "l2", "cuda:99", "cpu", "meta"]),
        hostile_json(3),
    )
    names = st.one_of(st.sampled_from(SETTINGS), odd_text)
    cheap = {"steps": 1, "crop_size": 8, "batch_size": 1, "device": "cpu"}
    return st.one_of(
        st.dictionaries(names, value, max_size=4).map(lambda given: {**cheap, **given}),
        hostile_json(3),
    )


@st.composite
def _upload_probe(draw: st.DrawFn, data: bytes, filename: str) -> Probe:
    query = draw(
        st.sampled_from(
            [
                f"?filename={escape(filename)}",
                f"?filename={escape(filename, safe='/')}",
                "",
                "?filename=",
                "?filename=a.png&filename=b.png",
                f"?filename={filename}",
            ]
        )
    )
    target = "/v2/training/uploads" + query
    if draw(st.integers(0, 3)) == 0:  # chunked, in pieces of any size
        size = draw(st.sampled_from([1, 7, 4096]))
        pieces = [data[at : at + size] for at in range(0, len(data), size)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
        request = compose("POST", target, [("Transfer-Encoding", "chunked")], body)
    else:
        request = compose("POST", target, [("Content-Type", "image/png")], data)
    return Probe("http", request, True, "training upload")


def _upload_bytes() -> st.SearchStrategy[bytes]:
    signatures = [
        b"\x89PNG\r\n\x1a\n",
        b"\x76\x2f\x31\x01",
        b"II*\x00",
        b"MM\x00*",
        b"SDPX",
        b"\xff\xd8\xff",
    ]
    return st.one_of(
        st.binary(max_size=200),
        st.tuples(st.sampled_from(signatures), st.binary(max_size=200)).map(b"".join),
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4])).map(
            lambda size: png(size[0], size[1], channels=size[2])
        ),
        st.sampled_from([png_bomb(), png_bomb(1, 2**31 - 1), png(16, 16)[:60], b""]),
    )


@st.composite
def uploads(draw: st.DrawFn) -> list[Probe]:
    """One upload of odd bytes under an odd file name."""
    filename = draw(
        st.one_of(
            st.sampled_from(["a.png", "plate.1001.exr", "x.tif", "x.jpg", "x.dpx"]),
            st.sampled_from(
                [
                    "../a.png",
                    "a/b.png",
                    ".png",
                    "a.png\x00.txt",
                    "a.PNG",
                    "a.txt",
                    "con.png",
                    "a" * 300 + ".png",
                    "é.png",
                    " a.png",
                ]
            ),
            odd_text,
        )
    )
    return [draw(_upload_probe(draw(_upload_bytes()), filename))]


@st.composite
def jobs(draw: st.DrawFn, root: Path) -> list[Probe]:
    """A job submission with hostile JSON, after the uploads it names (if any)."""
    probes, ids = [], []
    if draw(st.integers(0, 2)) == 0:
        for seed in range(2):
            data = png(16, 16, seed=seed + 10)
            probes.append(draw(_upload_probe(data, f"f{seed}.png")))
            ids.append(upload_id(data))
    name = draw(st.one_of(st.sampled_from(["fuzz-job", KEPT_JOB, "identity", "blur"]), odd_text))
    frame = _frame(root, ids)
    body: Any = {"name": name}
    kind = draw(st.sampled_from(["pairs", "pairs", "labels", "values", "two", "none"]))
    if kind == "pairs":
        pair = st.one_of(st.lists(frame, min_size=2, max_size=2), hostile_json(3))
        body["pairs"] = draw(st.one_of(st.lists(pair, max_size=3), hostile_json(3)))
        if draw(st.booleans()):
            body["validation"] = draw(st.lists(pair, max_size=2))
        if draw(st.integers(0, 9)) == 0:  # one frame named many times
            body["pairs"] = [[str(root / "pair/in.png"), str(root / "pair/target.png")]] * 300
    elif kind in ("labels", "values"):
        source = {"labels": "labels", "values": "values.csv"}[kind]
        body[kind] = draw(st.one_of(st.just(str(root / source)), st.just(source), _paths(root)))
        if draw(st.booleans()):
            body["validation"] = draw(st.one_of(_paths(root), hostile_json(2)))
    elif kind == "two":
        body["pairs"], body["labels"] = [], str(root / "labels")
    body["settings"] = draw(_settings())
    if draw(st.integers(0, 9)) == 0:
        body[draw(odd_text)] = draw(hostile_json(3))
    text = dumps(body)
    whole = draw(st.integers(0, 11))
    if whole == 0:
        text = dumps(draw(hostile_json()))
    elif whole == 1:
        text = dumps(
            draw(st.sampled_from([deep_nesting(100_000), deep_nesting(50_000, kind="object")]))
        )
    elif whole == 2:
        text = text.replace(b'"', b'"\xff\xfe', 2)  # not UTF-8
    headers = [("Content-Type", draw(st.sampled_from(["application/json", "text/plain", ""])))]
    probes.append(
        Probe("http", compose("POST", "/v2/training/jobs", headers, text), True, "training job")
    )
    return probes


@st.composite
def job_paths(draw: st.DrawFn, root: Path) -> list[Probe]:
    """A request to a job's or an upload's own path, with odd names and queries."""
    outside = root.parent / "outside"
    name = draw(st.one_of(st.sampled_from([KEPT_JOB, "fuzz-job", "nope"]), odd_segment()))
    action = draw(st.sampled_from(["", "/contact_sheet", "/package", "/cancel", "/resume", "/x"]))
    query = ""
    if action == "/package" or draw(st.integers(0, 4)) == 0:
        parts = {
            "id": st.one_of(
                st.sampled_from(
                    [
                        str(outside / "victim"),
                        "../../outside/victim",
                        "../" * 8 + "tmp/victim",
                        "ok_id",
                        "",
                    ]
                ),
                odd_text,
            ),
            "format": st.one_of(st.sampled_from(["pt", "pt2", "onnx", "zip", "../x"]), odd_text),
            "checkpoint": st.one_of(st.sampled_from(["latest", "0", "-1", "../../x"]), odd_text),
            "version": st.one_of(st.sampled_from(["1.0.0", "", "../x"]), odd_text),
            "other": odd_text,
        }
        given = draw(st.lists(st.sampled_from(sorted(parts)), max_size=3, unique=True))
        query = "?" + "&".join(f"{key}={escape(draw(parts[key]), safe='/')}" for key in given)
    method = draw(st.sampled_from(["GET", "GET", "POST", "DELETE", "HEAD", "PUT"]))
    if method == "DELETE" and name == KEPT_JOB:
        method = "GET"
    body = b""
    if action == "/resume" or draw(st.integers(0, 5)) == 0:
        steps = draw(st.one_of(st.integers(-(2**64), 2**64), st.floats(), odd_text, st.none()))
        body = draw(st.one_of(st.just(dumps({"steps": steps})), hostile_json(3).map(dumps)))
    if draw(st.integers(0, 3)) == 0:
        identity = draw(st.one_of(odd_segment(), st.sampled_from(["0" * 32, "..", "%2e%2e"])))
        target = f"/v2/training/uploads/{identity}"
    else:
        target = f"/v2/training/jobs/{name}{action}{query}"
    return [Probe("http", compose(method, target, (), body), True, "training path")]


def _call(address: tuple[str, int], method: str, path: str, timeout: float) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


def clean_up(address: tuple[str, int], *, timeout: float) -> list[str]:
    """Cancel every job, delete all but :data:`KEPT_JOB`, and delete every upload.

    Returns the problems met (a 5xx while cleaning is one as well).
    """
    problems = []
    status, listed = _call(address, "GET", "/v2/training/jobs", timeout)
    for job in (listed or {}).get("jobs", []) if status == 200 else []:
        name = str(job.get("name", ""))
        path = f"/v2/training/jobs/{escape(name)}"
        if job.get("state") in ("queued", "running"):
            _call(address, "POST", path + "/cancel", timeout)  # the kept job too (resumed)
        if name == KEPT_JOB:
            continue
        status, _ = _call(address, "DELETE", path, timeout)
        if status >= 500:
            problems.append(f"5xx: {status} deleting the job {name!r}")
    status, listed = _call(address, "GET", "/v2/training/uploads", timeout)
    for upload in (listed or {}).get("uploads", []) if status == 200 else []:
        _call(
            address,
            "DELETE",
            f"/v2/training/uploads/{escape(str(upload.get('id')))}",
            timeout,
        )
    return problems


def keep_a_finished_job(address: tuple[str, int], root: Path, *, timeout: float) -> str:
    """Train :data:`KEPT_JOB` for one step on the data root's pair; return its state."""
    body = json.dumps(
        {
            "name": KEPT_JOB,
            "pairs": [[str(root / "pair/in.png"), str(root / "pair/target.png")]],
            "settings": {
                "steps": 1,
                "crop_size": 8,
                "batch_size": 1,
                "validation_interval": 0,
                "contact_sheet_interval": 1,
                "device": "cpu",
            },
        }
    )
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("POST", "/v2/training/jobs", body, {"Content-Type": "application/json"})
        conn.getresponse().read()
    finally:
        conn.close()
    state = "missing"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = _call(address, "GET", f"/v2/training/jobs/{KEPT_JOB}", timeout)
        state = str((job or {}).get("state", "missing")) if status == 200 else "missing"
        if state not in ("queued", "running"):
            break
        time.sleep(0.2)
    return state
