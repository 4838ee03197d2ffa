"""Atomic writes, output folders and their lock.

A file either appears complete or not at all, and a failed write is one TLError: every
published file goes through :func:`atomic_path`, every command that creates its output
folder through :func:`ensure_output_dir`, so an unwritable folder or a full disk reads the
same everywhere (which file or folder, and why). :func:`output_lock` keeps two commands
from writing one folder at once, and :func:`signals_deferred` keeps Ctrl-C out of the middle of
a few renames that publish files together. Temporary names carry the writer's pid, so the next
command that locks the folder removes what a killed writer left (:func:`remove_stale_temps`).
Results meant for a stream (``-o /dev/stdout``, a FIFO, ``/dev/null``) are written to it as a
stream (:func:`write_output`): only a regular file is ever replaced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from tl.runtime.errors import TLError, escaped
from tl.runtime.progress import SILENT, Reporter

LOCK_NAME = ".tl.lock"  # inside the folder a command writes; never an artifact
# A temporary file or folder beside NAME: ".NAME.tl<pid>.<random>.tmp". The pid says whose it is, so a
# temporary of a process that no longer runs (SIGKILL, power loss) is known to be garbage.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.tl(?P<pid>\d+)\.[^.]+\.tmp")

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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty folder beside ``path`` to build it in (``.NAME.tl<pid>.*.tmp``), with the mode a plain
    mkdir gives (mkdtemp's is 0700): what is built there is moved into place whole."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise write_error(path, e) from e
    return tmp


def temp_target(name: str) -> str | None:
    """The NAME a tl temporary (``.NAME.tl<pid>.*.tmp``) is being written for; None for any other name."""
    m = _TEMP_NAME.fullmatch(name)
    return m["name"] if m else None


def temp_prefix(name: str) -> str:
    """mkstemp/mkdtemp prefix of a temporary beside ``name`` (suffix ``.tmp``), marked with this process."""
    return f".{name}.tl{os.getpid()}."


def _refuse_file_target(path: Path) -> None:
    if path.is_dir():
        raise TLError(f"could not write {path}: it is a folder; give a file name")
    if path.exists() and not path.is_file():  # a device, FIFO or socket: replacing it would destroy it
        raise TLError(f"could not write {path}: it is not a regular file (a device, pipe or socket); "
                      "give a file name")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise TLError(f"could not write {path}: {blocker} is a file, not a folder")


def check_writable(path: str | Path) -> None:
    """Refuse now what :func:`atomic_path` would refuse after the work (a folder in the way, a
    parent that is a file, a folder where no file can be created), with the same message.
    A full disk still shows only when the file is written."""
    path = Path(path)
    _refuse_file_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=".tl-write-check.", dir=path.parent):
            pass
    except OSError as e:
        raise write_error(path, e) from e


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds.

    mkstemp creates the temp file 0600; it gets the mode a plain open() would give, so a
    published checkpoint, model or report is as readable as any other file. A write that
    fails for an OS reason (read-only folder, full disk, a folder in the way) becomes a
    TLError naming ``path``; the temp file is removed either way.
    """
    path = Path(path)
    _refuse_file_target(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
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


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) during a block of renames that publish files together arrives after it, not half-way."""
    deferred = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int, default: str = "not a regular file") -> str:
    """What a file of ``mode`` (st_mode) that is neither a regular file nor a folder is, for a message."""
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), default)


def is_stream(path: str | Path) -> bool:
    """Whether results for ``path`` go to it as a stream: a device (``/dev/null``), a FIFO or socket, or a
    link under /dev or /proc to an open file (``/dev/stdout``). A temp file + rename there would replace
    the special file with a regular one."""
    absolute = Path(os.path.abspath(path))
    try:
        mode = os.stat(absolute).st_mode
    except OSError:
        return False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return True
    # /dev/stdout, /dev/fd/3, /proc/self/fd/1 name a file some process has open (here a regular one):
    # a rename would replace the name, not write to that file.
    return absolute.parts[1:2] in (("dev",), ("proc",)) and absolute.is_symlink()


def check_output_target(path: str | Path) -> None:
    """Refuse now what :func:`write_output` would refuse after the work."""
    if not is_stream(path):
        check_writable(path)
    elif not os.access(path, os.W_OK):
        reason = "not found" if not os.path.lexists(path) else "permission denied"
        raise TLError(f"could not write {path}: {reason}")


def write_output(path: str | Path, data: bytes) -> None:
    """Results into ``path``: written as a stream to a device, FIFO or /dev/stdout, atomically to a file."""
    if not is_stream(path):
        atomic_write_bytes(path, data)
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise write_error(path, e) from e


def remove_stale_temps(folder: str | Path, *, name: str | None = None) -> list[Path]:
    """Remove the temporaries (``.NAME.tl<pid>.*.tmp``, of one ``name`` if given) in ``folder`` whose
    writer no longer runs; return them.

    Called with the folder's lock held, so no other tl command is writing there; a pid that is running
    (even a reused one) keeps its files.
    """
    removed = []
    with contextlib.suppress(OSError):
        for p in sorted(Path(folder).iterdir()):
            m = _TEMP_NAME.fullmatch(p.name)
            if m is None or (name is not None and m["name"] != name) or _running(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a pid beyond the OS's: not ours to judge
        return True
    return True


def stale_temps_note(removed: list[Path], folder: str | Path) -> str:
    """The line that says what :func:`remove_stale_temps` removed."""
    names = ", ".join(escaped(p.name) for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
    return f"removed {len(removed)} temporary file(s) that an ended tl command left in {folder}: {names}"


@contextlib.contextmanager
def new_folders_removed_on_error(path: str | Path | None) -> Iterator[None]:
    """The folders of ``path`` that do not exist yet are removed again, if still empty, when the block fails:
    a refused command leaves no empty output folder behind."""
    if path is None:
        yield
        return
    path = Path(os.path.abspath(path))
    new = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # innermost first
    try:
        yield
    except BaseException:
        for p in new:
            try:
                p.rmdir()
            except OSError:  # not empty (something was written), or already gone
                break
        raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (a VGG16 ONNX is 500 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the output-folder lock ------------------------------------------------------------------


def _holder(fd: int, tries: int = 10) -> str:
    """Who holds the lock, from what the holder wrote into the lock file. A holder that has just
    taken the lock writes it a moment later, so an empty or partial record is read again."""
    for attempt in range(tries):
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
            since = time.localtime(float(data["since"]))
            when = time.strftime("%H:%M:%S" if since[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S", since)
            return f"`{data['command']}` (pid {int(data['pid'])}, since {when})"
        except (OSError, ValueError, KeyError, TypeError):  # not written yet, or by a future tl
            if attempt + 1 < tries:
                time.sleep(0.02)
    return "another tl command"


def _open_locked(lock: Path, command: str) -> int:
    """An fd holding LOCK_EX on ``lock``, after checking it is still the file at that path (a
    holder that is finishing unlinks it; locking the unlinked inode would lock nothing)."""
    import fcntl

    for _ in range(20):
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed between mkdir and open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise TLError(f"{lock.parent} is in use by {who}; wait for it to finish or pass another --out") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            record = {"pid": os.getpid(), "command": command, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
            return fd
        os.close(fd)
    raise TLError(f"could not lock {lock.parent}: other tl commands keep taking it; try again")


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str, *, reporter: Reporter = SILENT) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for a whole command.

    Two commands writing one folder would leave files from both that look like one
    result; the second one fails at once and says who holds the folder. The lock is
    flock on ``folder/.tl.lock`` (released by the kernel when the process dies, so a
    killed command never leaves the folder locked); the file is removed when the command ends.
    Once it is held, the temporaries of killed writers are removed, and ``reporter`` says which.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TLError(f"{folder} is a file; give a folder")
    try:
        import fcntl  # noqa: F401 - POSIX only
    except ImportError:  # no flock here: run unlocked rather than not at all
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    lock = folder / LOCK_NAME
    fd = _open_locked(lock, command)
    try:
        removed = remove_stale_temps(folder)
        if removed:
            reporter.info(stale_temps_note(removed, folder))
        yield folder
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a newcomer that opened it retries on the new file
        os.close(fd)
