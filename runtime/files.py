"""Atomic writes: a file either appears complete or not at all, and a failed write is one TLError.

Every published file goes through :func:`atomic_path`, and every command that creates its
output folder through :func:`ensure_output_dir`, so an unwritable folder or a full disk
reads the same everywhere: which file or folder, and why.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


from tl.runtime.errors import TLError

# errno -> why, in the user's terms.
_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "File too large (the disk is full or a file-size limit is set)",
    errno.ENOSPC: "No space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``exc`` itself, or the one a library wrapped.

    torch.save into a Python file reports a failed write as a RuntimeError whose
    context is the OSError (EFBIG, ENOSPC) that the file object raised.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _reason(e: OSError) -> str:
    return _REASONS.get(e.errno, e.strerror or str(e))


def write_error(path: str | Path, e: OSError) -> TLError:
    """``could not write PATH: why``, for an OSError raised while writing ``path``."""
    return TLError(f"could not write {path}: {_reason(e)}")


def os_error_message(e: OSError) -> str:
    """``PATH: why`` (``SRC -> DST: why`` for a rename) for an OSError that names its file."""
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else f"{e.filename}"
    return f"{where}: {_reason(e)}"


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing parent of ``path`` that is a file (so no folder can be made there)."""
    return next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)


def ensure_output_dir(path: str | Path, *, option: str = "--out") -> Path:
    """Create ``path`` (and parents) and prove a file can be written there, before any work.

    A file where a folder is expected, a read-only folder or a full disk is a TLError
    naming ``option`` and the folder, not a traceback minutes later.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TLError(f"{option} {path} is a file; give a folder")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise TLError(f"{option} {path}: cannot create the folder, {blocker} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=".tl-write-check.", dir=path):
            pass
    except OSError as e:
        raise TLError(f"{option} {path}: cannot create or write to this folder: {_reason(e)}") from e
    return path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds.

    mkstemp creates the temp file 0600; it gets the mode a plain open() would give, so a
    published checkpoint, model or report is as readable as any other file. A write that
    fails for an OS reason (read-only folder, full disk, a folder in the way) becomes a
    TLError naming ``path``; the temp file is removed either way.
    """
    path = Path(path)
    if path.is_dir():
        raise TLError(f"could not write {path}: it is a folder; give a file name")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise TLError(f"could not write {path}: {blocker} is a file, not a folder")
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, _default_mode())
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as e:
        os_error = _os_error_of(e)
        if os_error is None or isinstance(e, TLError):
            raise
        raise write_error(path, os_error) from e
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (a VGG16 ONNX is 500 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
