"""Safe unpacking of a downloaded bundle tar: header checks first, then only verified bytes reach the disk."""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from edge.atomic import fsync_dir
from edge.bundle import Bundle
from edge.ota.errors import OtaError

MAX_MEMBERS = 16


def check_tar(path: Path, max_total_bytes: int) -> list[str]:
    """Refuse a tar with absolute paths, `..`, folders, links, devices, duplicates or too many bytes.

    Only the headers are read. Returns the member names. Raises OtaError: `unsafe-path`, `unsafe-link`,
    `unsafe-member`, `too-large`, `bad-tar`.
    """
    names: list[str] = []
    total = 0
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                name = m.name
                parts = PurePosixPath(name).parts
                if name.startswith("/") or PurePosixPath(name).is_absolute():
                    raise OtaError("unsafe-path", f"bundle member {name!r} is an absolute path")
                if ".." in parts or "\\" in name:
                    raise OtaError("unsafe-path", f"bundle member {name!r} climbs out with '..'")
                if m.issym() or m.islnk():
                    raise OtaError("unsafe-link", f"bundle member {name!r} is a link to {m.linkname!r}")
                if not m.isfile():
                    raise OtaError("unsafe-member", f"bundle member {name!r} is not a regular file "
                                                    f"(tar type {m.type!r})")
                if len(parts) != 1:
                    raise OtaError("unsafe-path", f"bundle member {name!r} is inside a folder")
                if name in names:
                    raise OtaError("unsafe-member", f"bundle member {name!r} appears twice")
                names.append(name)
                total += m.size
                if total > max_total_bytes:
                    raise OtaError("too-large", f"bundle members add up to more than {max_total_bytes} bytes")
                if len(names) > MAX_MEMBERS:
                    raise OtaError("unsafe-member", f"bundle has more than {MAX_MEMBERS} members")
    except tarfile.TarError as e:
        raise OtaError("bad-tar", f"bundle is not a readable tar: {e}") from None
    return names


def extract_verified(bundle: Bundle, dest: Path) -> Path:
    """Write the verified members of `bundle` into the folder `dest` (temp folder, fsync, rename).

    `dest` must not exist yet unless it holds exactly these bytes from an earlier, interrupted attempt.
    """
    for name in bundle.members:
        if "/" in name or name in ("", ".", ".."):
            raise OtaError("unsafe-path", f"bundle member {name!r} is not a plain file name")
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name("." + dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name, data in bundle.members.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(tmp)
    except OSError as e:  # a full disk, an I/O error: leave nothing half-written to fill it further
        shutil.rmtree(tmp, ignore_errors=True)
        code = "disk-full" if e.errno == errno.ENOSPC else "io-error"
        raise OtaError(code, f"cannot write the model to {dest.parent}: {e.strerror or e}") from None
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return dest
