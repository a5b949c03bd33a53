"""Replace a folder's contents in one step: write the new contents into a fresh sibling folder,
flush them to disk, and swap that folder in (an exchange of the two where Linux offers
``renameat2(RENAME_EXCHANGE)``, else two renames that :func:`recover_interrupted_save` completes).

A writer that fails or is killed at any point leaves the previous folder readable, or the new one
complete; never a mix. ``hub.save_adapter`` is the user; ``tests/modeling/test_save_atomic.py``
kills it at every :func:`boundary`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def replace_folder(target: Path, fill: Callable[[Path], None]) -> None:
    """Make ``target`` hold what ``fill(tmp)`` writes into an empty sibling folder ``tmp``.

    Leftovers of an earlier killed replacement are cleaned first. OSError propagates, with
    ``target`` as it was. Two replacements of one folder at the same time are not supported.
    """
    recover_interrupted_save(target)
    _remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.saving-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0o700
        boundary("temp folder made")
        fill(tmp)
        fsync(tmp)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new files (failure) or the old folder (swapped out)
        boundary("old copy removed")


def boundary(step: str) -> None:
    """Marks the point between two steps of a replacement. Does nothing: the kill test replaces it with
    ``os._exit`` to end the process at each step, and checks the folder still loads."""


def link_or_copy(src: Any, dst: Any) -> None:
    try:
        os.link(src, dst)  # same filesystem (a sibling folder): instant, no second copy
    except OSError:
        shutil.copy2(src, dst)


def write_synced(path: Path, write: Callable[[str], Any]) -> None:
    write(str(path))
    os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0o600; what we save is no secret
    fsync(path)


def fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk, so a crash after the swap cannot lose them."""
    if os.name != "posix" and path.is_dir():
        return  # a folder cannot be opened for fsync there
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot sync folders
            raise
    finally:
        os.close(fd)


def _swap_in(tmp: Path, target: Path) -> None:
    """Make ``tmp`` the ``target`` folder; afterwards ``tmp`` holds the previous one, if there was one."""
    if not target.exists():
        os.rename(tmp, target)
        boundary("folder renamed")
    elif _exchange(tmp, target):
        boundary("folders exchanged")
    else:  # two renames; recover_interrupted_save puts the old folder back if we die between them
        backup = _backup_path(target)
        os.rename(target, backup)
        boundary("old folder moved aside")
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(backup, target)
            raise
        boundary("new folder moved in")
        os.rename(backup, tmp)
    fsync(target.parent)


def _backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def recover_interrupted_save(target: PathLike) -> None:
    """Put the previous folder back if a replacement died between moving it aside and moving the new one in."""
    target = Path(os.path.realpath(os.fspath(target)))
    backup = _backup_path(target)
    if not os.path.lexists(target) and backup.is_dir():
        os.rename(backup, target)


def _remove_leftovers(target: Path) -> None:
    """Remove the temp folders and the moved-aside copy a killed save left beside ``target``."""
    for stale in target.parent.glob(f".{_glob_escape(target.name)}.saving-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(_backup_path(target), ignore_errors=True)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # old kernel, or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.lru_cache(maxsize=None)
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _umask() -> int:
    """The process umask, read without setting it where Linux shows it (setting is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


