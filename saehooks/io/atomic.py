"""Replace a whole folder at once: after a crash at any moment it holds the old
content or the new one, complete, never a mix of the two.

How a save of the folder ``<parent>/<name>`` works (directory renames are atomic on
POSIX file systems, and a directory's files move with it):

1. Take an exclusive ``flock`` on the parent folder (the kernel drops it when the
   process dies, so a killed writer never leaves a stale lock), then *settle* what an
   earlier, killed save left behind (below).
2. Write every file into ``<parent>/.<name>.tmp-<random>``; fsync each file and the
   folder.
3. Rename it to ``.<name>.new-<random>``: this name means "complete", since nothing
   is written into a folder after it gets it. Fsync the parent.
4. If ``<name>`` exists, rename it to ``.<name>.old-<random>``; rename the ``.new``
   folder to ``<name>``; fsync the parent; delete the ``.old`` folder.

Each folder's content is final before the folder gets the target name, and only whole
folders are renamed, so a folder mixing two saves never exists. A kill lands in one of
these states, each of which settles to exactly one complete save:

=================================  ==========================================
after the kill                     settled (next save or load) to
=================================  ==========================================
``<name>`` (old), ``.tmp-*``       the old folder; ``.tmp-*`` deleted
``<name>`` (old), ``.new-*``       the old folder; ``.new-*`` deleted
no ``<name>``; ``.new-*``,         the new folder (``.new-*`` renamed to
``.old-*``                         ``<name>``); ``.old-*`` deleted
``<name>`` (new), ``.old-*``       the new folder; ``.old-*`` deleted
=================================  ==========================================

Settling happens under the exclusive lock, at the start of every save and, when
leftovers exist, in every load (:func:`reading`), so leftovers never outlive the next
use of the folder. A reader holds a shared lock while it reads its files, so it never
reads one file of the old folder and another of the new one, and it never sees the
instant between the two renames of step 4. Where the file system offers no ``flock``
(Windows, some network mounts) the crash guarantees above still hold; a reader then
reads :func:`current` (the target, else the complete ``.new-*``, else ``.old-*``) and
leaves settling to the next save.

Source: the write-to-temporary-then-rename pattern of ``rename(2)``; the ``.new``
marker plays the role of a commit record.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the rename scheme alone
    fcntl = None  # type: ignore[assignment]

KINDS = ("tmp", "new", "old")
_SUFFIX = re.compile(r"\.(tmp|new|old)-[0-9a-f]{16}")


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalised (``.`` and ``..`` removed, so that it has
    a name and a parent), without resolving symlinks."""
    return Path(os.path.abspath(path))


def _sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{secrets.token_hex(8)}"


def leftovers(path: Path) -> dict[str, list[Path]]:
    """The ``.tmp-*``, ``.new-*`` and ``.old-*`` siblings of ``path``, oldest first."""
    path = _absolute(path)
    out: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    prefix = f".{path.name}"
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return out
    for entry in entries:
        if entry.startswith(prefix):
            match = _SUFFIX.fullmatch(entry[len(prefix) :])
            if match:
                out[match.group(1)].append(path.parent / entry)
    for kind in KINDS:
        out[kind].sort(key=_mtime)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def current(path: Path) -> Path | None:
    """The folder that holds ``path``'s content now: ``path`` itself, else the newest
    complete ``.new-*`` sibling, else the ``.old-*`` one (a save killed between its
    two renames); None when there is none."""
    path = _absolute(path)
    if os.path.lexists(path):
        return path
    found = leftovers(path)
    for kind in ("new", "old"):
        if found[kind]:
            return found[kind][-1]
    return None


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some platforms cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def settle(path: Path) -> None:
    """Finish or undo a killed save of ``path`` and delete its leftovers.

    Call with the exclusive lock held (see the module docstring for the states).
    """
    path = _absolute(path)
    found = leftovers(path)
    if not os.path.lexists(path):
        for kind in ("new", "old"):
            if found[kind]:
                os.rename(found[kind].pop(), path)
                _fsync_dir(path.parent)
                break
    for kind in KINDS:
        for leftover in found[kind]:
            _remove(leftover)


class _ParentLock:
    """``flock`` on a folder's file descriptor; a no-op where that is not possible."""

    def __init__(self, folder: Path) -> None:
        self.fd: int | None = None
        if fcntl is not None:
            with contextlib.suppress(OSError):
                self.fd = os.open(folder, os.O_RDONLY)

    def acquire(self, exclusive: bool) -> bool:
        """Take (or convert to) the lock; False when locking is not available."""
        if self.fd is None:
            return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also releases the lock
            self.fd = None


def tidy(path: Path) -> None:
    """Settle ``path`` now under the exclusive lock, if anything is left to settle.

    For a path that does not exist as a folder: a killed save's complete folder is
    put in place, and incomplete ones are deleted. Errors of a read-only file system
    are ignored (nothing is changed then).
    """
    path = _absolute(path)
    if not any(leftovers(path).values()):
        return
    lock = _ParentLock(path.parent)
    try:
        lock.acquire(exclusive=True)
        with contextlib.suppress(OSError):
            settle(path)
    finally:
        lock.close()


@contextlib.contextmanager
def reading(path: Path) -> Iterator[Path]:
    """Hold ``path`` still while it is read; yields the folder to read.

    Takes a shared lock on the parent (a save waits until the block ends, and the
    block waits for a running save to finish). When a killed save left leftovers,
    they are settled first under the exclusive lock; where that fails (a read-only
    file system) the complete folder is read where it lies.
    """
    path = _absolute(path)
    lock = _ParentLock(path.parent)
    try:
        if lock.acquire(exclusive=False):
            found = leftovers(path)
            if any(found.values()):
                try:
                    if lock.acquire(exclusive=True):
                        settle(path)
                except OSError:
                    pass
                lock.acquire(exclusive=False)
        yield current(path) or path
    finally:
        lock.close()


def replace_folder(
    path: Path, write: Callable[[Path], None], check: Callable[[Path], None] | None = None
) -> None:
    """Replace the folder ``path`` by what ``write(folder)`` writes, all at once.

    Args:
        path: the folder to create or replace; its parent is created if needed.
        write: writes the new content into the (empty, temporary) folder it is given.
        check: called with ``path`` when something is already there, before anything
            is written, under the lock; raise from it to refuse the save.

    Raises:
        whatever ``check`` or ``write`` raise (the folder is then unchanged), and
        OSError from the file system.
    """
    path = _absolute(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    lock = _ParentLock(parent)
    try:
        lock.acquire(exclusive=True)
        settle(path)
        if check is not None and os.path.lexists(path):
            check(path)
        tmp: Path | None = _sibling(path, "tmp")
        new: Path | None = None
        old: Path | None = None
        os.mkdir(tmp)
        try:
            write(tmp)
            _fsync_tree(tmp)
            new = _sibling(path, "new")
            os.rename(tmp, new)
            tmp = None
            _fsync_dir(parent)
            if os.path.lexists(path):
                old = _sibling(path, "old")
                os.rename(path, old)
            os.rename(new, path)
            new = None
            _fsync_dir(parent)
        except BaseException:
            if old is not None and not os.path.lexists(path):
                os.rename(old, path)  # put the previous folder back
                old = None
            for leftover in (tmp, new):
                if leftover is not None:
                    _remove(leftover)
            raise
        if old is not None:
            _remove(old)
    finally:
        lock.close()
