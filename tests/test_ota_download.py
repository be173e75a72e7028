"""Downloads into staging against a real loopback HTTP server: resume with Range, the signed length as a hard cap,
stall timeout, file:// sources, and a transient failure retried (resuming) by the background worker."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from edge.ota.download import fetch
from edge.ota.errors import OtaError
from tests.test_ota_support import BundleServer, Device, tiny_models, wait_for

DATA = os.urandom(300_000)  # random per run: corruptions below must differ from it whatever it is
SHA = hashlib.sha256(DATA).hexdigest()


def test_normal_and_range_resume(tmp_path: Path) -> None:
    with BundleServer() as srv:
        d = fetch(srv.add("b", DATA), tmp_path / "x.bundle.part", len(DATA), SHA, 2.0)
        assert d.path.read_bytes() == DATA and d.resumed_from == 0
        # the first response is cut in half: the download goes on with a Range request
        srv.requests.clear()
        d = fetch(srv.add("f", DATA, "flaky"), tmp_path / "y.bundle.part", len(DATA), SHA, 2.0)
        assert d.path.read_bytes() == DATA
        assert srv.requests[0] == ("f", None) and srv.requests[1] == ("f", f"bytes={len(DATA) // 2}-")


def test_stall_keeps_the_part_and_the_next_attempt_resumes(tmp_path: Path) -> None:
    part = tmp_path / "s.bundle.part"
    with BundleServer() as srv:
        url = srv.add("s", DATA, "stalled")
        t0 = time.monotonic()
        with pytest.raises(OtaError) as e:
            fetch(url, part, len(DATA), SHA, 0.5)
        assert e.value.code == "stalled" and e.value.transient
        assert time.monotonic() - t0 < 10
        kept = part.stat().st_size
        assert 0 < kept < len(DATA)
        srv.add("s", DATA, "normal")
        srv.requests.clear()
        d = fetch(url, part, len(DATA), SHA, 0.5)
        assert d.resumed_from == kept and d.path.read_bytes() == DATA
        assert srv.requests == [("s", f"bytes={kept}-")]


def test_slow_retrieval_counts_as_stalled(tmp_path: Path) -> None:
    with BundleServer() as srv:
        t0 = time.monotonic()
        with pytest.raises(OtaError) as e:
            fetch(srv.add("t", DATA, "trickle"), tmp_path / "t.bundle.part", len(DATA), SHA, 1.0)
    assert e.value.code == "stalled"
    assert time.monotonic() - t0 < 10  # a 300 kB trickle at 160 B/s would take half an hour


@pytest.mark.parametrize("mode,served,code", [
    ("truncated", DATA[:-1], "truncated"),
    ("normal", DATA + b"x", "too-long"),
    ("no-length", DATA + b"x", "too-long"),
    ("endless", DATA, "too-long"),
    ("normal", DATA[:-1] + bytes([DATA[-1] ^ 0xFF]), "hash-mismatch"),  # the last byte changed, always
    ("missing", b"", "http-error"),
])
def test_http_refusals(tmp_path: Path, mode: str, served: bytes, code: str) -> None:
    part = tmp_path / "r.bundle.part"
    with BundleServer() as srv:
        with pytest.raises(OtaError) as e:
            fetch(srv.add("r", served, mode), part, len(DATA), SHA, 2.0)
    assert e.value.code == code, e.value
    if not e.value.transient:
        assert not part.exists()  # nothing of a refused download is kept
    assert not (tmp_path / "r.bundle").exists()


def test_file_source(tmp_path: Path) -> None:
    src = tmp_path / "src.bundle"
    src.write_bytes(DATA)
    assert fetch(src.as_uri(), tmp_path / "a.bundle.part", len(DATA), SHA, 1.0).path.read_bytes() == DATA
    src.write_bytes(DATA + b"x")
    with pytest.raises(OtaError, match="too-long"):
        fetch(src.as_uri(), tmp_path / "b.bundle.part", len(DATA), SHA, 1.0)
    src.write_bytes(DATA[:10])
    with pytest.raises(OtaError, match="truncated"):
        fetch(src.as_uri(), tmp_path / "c.bundle.part", len(DATA), SHA, 1.0)
    with pytest.raises(OtaError, match="network"):
        fetch((tmp_path / "nope").as_uri(), tmp_path / "d.bundle.part", len(DATA), SHA, 1.0)


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, bytes]:
    return tiny_models(request.config)


def test_worker_retries_a_stalled_download_and_resumes(tmp_path: Path, models: dict[str, bytes]) -> None:
    dev = Device(tmp_path, models)
    dev.with_ota(probation_frames=0, stall_timeout_s=0.5)
    b1 = dev.bundle(1)
    data = b1.read_bytes()
    with BundleServer() as srv:
        url = srv.add("b1", data, "stalled")
        up = dev.updater(retry_min_s=0.5)
        up.start()
        try:
            up.on_release("shelfscout/s042/model/release", dev.release(b1, url=url))
            assert wait_for(lambda: "failed" in dev.states(), timeout=10)
            assert dev.reports[-1]["ota"]["error"].startswith("stalled")
            srv.add("b1", data, "normal")  # the server recovers
            assert wait_for(lambda: dev.states()[-1] == "active", timeout=20)
            assert dev.current().startswith("v1-")
            ranges = [r for n, r in srv.requests if n == "b1"]
            assert ranges[0] is None and ranges[-1] == f"bytes={len(data) // 3}-"  # resumed where it stalled
        finally:
            up.stop()
