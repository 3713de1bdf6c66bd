"""Small file helpers shared by every writer: atomic writes, output checks and JSON."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _reason(exc: OSError) -> str:
    from mimic_runner.errors import no_room

    return no_room(exc) or exc.strerror or type(exc).__name__


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``mode`` from :func:`os.stat`)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _stat_error(exc: OSError, path: Path, what: str) -> str:
    """One line for a path that cannot even be looked at (too long, no permission, ...)."""
    if exc.errno == errno.ENAMETOOLONG:
        return (f"{what}: the path {str(path)[:80]}... is too long (a component or the whole "
                "path exceeds the file system's limit); choose a shorter name")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{what}: {path} does not exist"
    if exc.errno == errno.ELOOP:
        return f"{what}: {path} is a loop of symbolic links"
    return f"{what}: cannot look at {path} ({exc.strerror or type(exc).__name__})"


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, among others
        return False


def check_path_length(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse a path with a component longer than the file system allows (usually 255 bytes)
    or longer than ``PATH_MAX`` in all, before any ``stat``, ``mkdir`` or ``open`` fails
    on it with a traceback (``OSError: File name too long``). Returns the path."""
    from mimic_runner.errors import UserError

    p = Path(path)
    existing = p.parent
    while not _is_dir(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in p.parts), default=0)
    if longest > name_max or len(os.fsencode(p)) >= path_max:
        limit = (f"a name of {longest} bytes, the file system allows {name_max}"
                 if longest > name_max else f"{len(os.fsencode(p))} bytes in all, the limit "
                 f"is {path_max}")
        raise UserError(f"{what}: the path {str(p)[:60]}... is too long ({limit}); choose a "
                        "shorter name")
    return p


def require_regular_file(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, before it is opened, an input that is not an existing regular file.

    A FIFO would block the reader until someone writes into it, a device would be read forever,
    a folder or socket would fail somewhere deep inside the reader. Symbolic links are followed
    (a link to a regular file is fine). ``what`` names where the path came from (``data.path``,
    ``mimic-data info``) and starts the one-line :class:`~mimic_runner.errors.UserError`.
    Returns the path.
    """
    from mimic_runner.errors import UserError

    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL byte
        if isinstance(exc, ValueError):
            raise UserError(f"{what}: {path!r} is not a valid path") from None
        raise UserError(_stat_error(exc, p, what)) from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what}: {p} is {file_kind(mode)}, not a regular file; give a file")
    return p


def refuse_non_regular_output(path: str | os.PathLike[str], what: str | None = None) -> Path:
    """Refuse an output path whose current occupant is not a regular file.

    Replacing a FIFO, device, socket or folder with a written file is never what was meant
    (as root, ``--out /dev/null --overwrite`` would replace the system's ``/dev/null``). A
    symbolic link is judged by what it points to (a dangling one is fine: the link is replaced).
    Nothing there, or a regular file, passes. Returns the path.
    """
    from mimic_runner.errors import UserError

    p = Path(path)
    label = f"{what}: {p}" if what else str(p)
    try:
        mode = os.lstat(p).st_mode
        if stat.S_ISLNK(mode):
            mode = os.stat(p).st_mode
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError):
            raise UserError(f"{label!r} is not a valid path") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # nothing there (or a file as a folder:
            return p  # check_output_dir words that)
        raise UserError(_stat_error(exc, p, what or "output")) from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{label} is {file_kind(mode)}, not a regular file; refusing to replace "
                        "it, choose another output path")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file, and a failed writer leaves nothing behind. The
    temporary file is in the same folder (a rename across file systems would be a copy, which a
    full disk can cut short) and is flushed to disk before the rename. A folder that cannot be
    made or written is a :class:`~mimic_runner.errors.UserError`; a full disk while writing is
    the ``OSError`` it is, with the final path as its ``filename`` (a one-line message at the
    CLI, :func:`~mimic_runner.errors.exit_on_user_error`). An existing ``path`` that is not a
    regular file (FIFO, device, socket, folder) is refused, overwrite or not
    (:func:`refuse_non_regular_output`), and checked again just before the rename.
    """
    from mimic_runner.errors import UserError

    final = refuse_non_regular_output(path)
    if final.exists() and not overwrite:
        raise UserError(f"{final}: output exists; pass --overwrite to replace it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        if exc.errno is not None and _is_room(exc):
            exc.filename = str(final)
            raise
        raise UserError(f"{final}: cannot write into {final.parent} ({_reason(exc)}); choose "
                        "another output folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private
    try:
        yield tmp_path
        _fsync(tmp_path)
        refuse_non_regular_output(final)  # something may have appeared there meanwhile
        os.replace(tmp_path, final)
    except OSError as exc:
        if _is_room(exc):  # name the file the user asked for, not the temporary one
            exc.filename = str(final)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _is_room(exc: OSError) -> bool:
    from mimic_runner.errors import no_room

    return no_room(exc) is not None


def _fsync(path: Path) -> None:
    """Flush a written file to disk, so that a crash after the rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name beside it, flushed, renamed)."""
    final = Path(path)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return final


def hdf5_image(build: Callable[[Any], None]) -> memoryview:
    """The bytes of an HDF5 file that ``build(f)`` fills, made in memory.

    Write them with :func:`write_bytes_atomic`: HDF5 writing straight to a full disk leaves
    unflushable objects behind that print errors at every later deallocation and can crash the
    interpreter at exit; plain file I/O makes a full disk one clean ``OSError``.
    """
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getbuffer()


def check_output_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, before any work, an output folder that cannot be made or written to.

    ``what`` names where the folder came from (``--out``, ``paths.runs_dir=runs``) and starts
    the message of the :class:`~mimic_runner.errors.UserError` raised, which also names the
    folder and what to do.
    """
    from mimic_runner.errors import UserError

    out = check_path_length(path, what)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what}: {out} is a file, not a folder; choose another output folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: cannot create the folder {out}: {existing} is a file; "
                        "choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: the folder {existing} is not writable; choose another "
                        "output folder or fix its permissions")
    try:  # root passes os.access everywhere; a read-only mount or a full inode table does not
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"{what}: cannot write into {existing} ({_reason(exc)}); choose "
                        "another output folder") from None
    return out


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, before any work, an output file that cannot be written (a folder, FIFO, device
    or socket in its place, or a folder that cannot be made or written to:
    :func:`check_output_dir`)."""
    from mimic_runner.errors import UserError

    out = check_path_length(path, what)
    if out.is_dir():
        raise UserError(f"{what}: {out} is a folder; give a file name such as "
                        f"{out / 'result.json'}")
    refuse_non_regular_output(out, what)
    check_output_dir(out.parent, f"{what} {out}")
    return out


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())
