"""Fetch a release's bundle into staging: resumable, stall-bounded, never past the signed size, hash-checked."""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from edge.ota.errors import OtaError

CHUNK = 64 * 1024
MIN_PROGRESS_BYTES = 4096  # at least this much per stall timeout, or the download counts as stalled
MAX_ATTEMPTS = 4  # one request plus up to three resumes after a connection that ended early

FileOpener = Callable[[Path, str], BinaryIO]


def default_opener(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, open(path, mode))  # noqa: SIM115 (the caller closes it)


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    resumed_from: int  # bytes already in staging from an earlier, interrupted attempt
    seconds: float


def fetch(url: str, part: Path, size: int, sha256: str, stall_timeout_s: float,
          opener: FileOpener = default_opener) -> Downloaded:
    """Download `url` into `part` (kept between attempts to resume), then rename it to `part` minus `.part`.

    Raises OtaError: `too-long`, `truncated`, `stalled`, `hash-mismatch`, `http-error`, `network`, `disk-full`,
    `io-error`. On `hash-mismatch`/`too-long` the partial file is deleted; on the transient ones it is kept.
    """
    t0 = time.monotonic()
    part.parent.mkdir(parents=True, exist_ok=True)
    final = part.with_suffix("")
    if final.exists():  # a finished download from an attempt that was interrupted later on
        if final.stat().st_size == size and _sha256_file(final) == sha256:
            return Downloaded(final, size, size, time.monotonic() - t0)
        final.unlink()
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    resumed_from = have
    try:
        if url.startswith("file://"):
            _fetch_file(url, part, size, opener)
        else:
            _fetch_http(url, part, size, stall_timeout_s, opener)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            _unlink(part)
            raise OtaError("disk-full", f"no space left in {part.parent} for {size} bytes") from None
        raise OtaError("io-error", f"writing {part}: {e}") from None
    except OtaError as e:
        if not e.transient:
            _unlink(part)
        raise
    got = part.stat().st_size
    if got != size:  # pragma: no cover (the fetchers raise before this)
        raise OtaError("truncated", f"got {got} of {size} bytes")
    actual = _sha256_file(part)
    if actual != sha256:
        _unlink(part)
        raise OtaError("hash-mismatch", f"bundle sha256 is {actual[:12]}…, the release says {sha256[:12]}…")
    os.replace(part, final)
    return Downloaded(final, size, resumed_from, time.monotonic() - t0)


def _fetch_file(url: str, part: Path, size: int, opener: FileOpener) -> None:
    src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    try:
        fin = open(src, "rb")  # noqa: SIM115
    except OSError as e:
        raise OtaError("network", f"cannot open {src}: {e.strerror}") from None
    with fin, opener(part, "wb") as out:
        remaining = size
        while remaining > 0:
            buf = fin.read(min(CHUNK, remaining))
            if not buf:
                raise OtaError("truncated", f"{src} ended after {size - remaining} of {size} bytes")
            out.write(buf)
            remaining -= len(buf)
        if fin.read(1):
            raise OtaError("too-long", f"{src} is longer than the signed {size} bytes")
        out.flush()
        os.fsync(out.fileno())


def _fetch_http(url: str, part: Path, size: int, stall_timeout_s: float, opener: FileOpener) -> None:
    for _attempt in range(MAX_ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        if have == size:
            return
        req = urllib.request.Request(url, headers={"User-Agent": "shelfscout-ota"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=stall_timeout_s)  # noqa: S310 (scheme checked by Release)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                raise OtaError("truncated", f"the server has fewer than the signed {size} bytes "
                                            f"(range from {have} not satisfiable)") from None
            raise OtaError("http-error", f"HTTP {e.code} {e.reason} for {url}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise OtaError("stalled", f"no answer from {url} within {stall_timeout_s:g} s") from None
            raise OtaError("network", f"cannot reach {url}: {reason}") from None
        with resp:
            if resp.status == 206 and have:
                start = _content_range_start(resp.headers.get("Content-Range", ""))
                if start != have:
                    have = 0
            else:
                have = 0  # the server ignored the range: start again
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and have + int(length) > size:
                _unlink(part)
                raise OtaError("too-long", f"the server announces {have + int(length)} bytes, the release signs "
                                           f"{size}")
            progressed = _copy_bounded(resp, part, have, size, stall_timeout_s, opener,
                                       exact_length=length is not None and length.isdigit())
        if part.stat().st_size == size:
            return
        if not progressed:
            break
    got = part.stat().st_size if part.exists() else 0
    raise OtaError("truncated", f"the server sent {got} of the signed {size} bytes and then nothing more")


def _copy_bounded(resp: http.client.HTTPResponse, part: Path, have: int, size: int, stall_timeout_s: float,
                  opener: FileOpener, exact_length: bool) -> bool:
    """Append the body to `part` from offset `have`; never keep a byte past `size`. True if bytes arrived."""
    progressed = False
    with opener(part, "r+b" if have and part.exists() else "wb") as out:
        out.seek(have)
        out.truncate()
        mark, deadline = have, time.monotonic() + stall_timeout_s
        try:
            while have < size:
                if have - mark >= MIN_PROGRESS_BYTES:
                    mark, deadline = have, time.monotonic() + stall_timeout_s
                elif time.monotonic() > deadline:
                    # a trickle (TUF's slow-retrieval attack) never trips the socket timeout; this does
                    raise TimeoutError
                try:
                    buf = resp.read1(min(CHUNK, size - have))
                except http.client.IncompleteRead as e:
                    buf = e.partial[: size - have]
                    if buf:
                        out.write(buf)
                        have += len(buf)
                        progressed = True
                    break
                if not buf:
                    break
                out.write(buf)
                have += len(buf)
                progressed = True
            if have == size and not exact_length:
                # No Content-Length: the body ends when the server closes. One more byte means an endless or
                # overlong stream; silence until the stall timeout means the server just kept the line open.
                try:
                    extra = resp.read(1)
                except (TimeoutError, http.client.IncompleteRead):
                    extra = b""
                if extra:
                    out.flush()
                    raise OtaError("too-long", f"the server sends more than the signed {size} bytes")
        except TimeoutError:
            out.flush()
            os.fsync(out.fileno())
            raise OtaError("stalled", f"less than {MIN_PROGRESS_BYTES} bytes in {stall_timeout_s:g} s after {have} "
                                      f"of {size} bytes (kept for resume)") from None
        except (ConnectionError, http.client.HTTPException) as e:
            out.flush()
            os.fsync(out.fileno())
            if not progressed:
                raise OtaError("network", f"connection failed after {have} of {size} bytes: {e}") from None
        out.flush()
        os.fsync(out.fileno())
    return progressed


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, rng = value.split(" ", 1)
        return int(rng.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(CHUNK), b""):
            h.update(buf)
    return h.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
