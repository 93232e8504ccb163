"""One training run per out_dir at a time: an exclusive lock on out_dir/train.lock for the whole run.

    with RunLock(out_dir):       # UsageError if another live process holds it
        ...                      # load, check, train, save

The lock is `fcntl.flock` on out_dir/train.lock, which holds the holder's pid so that a second run
can name it. The kernel drops a flock when its process dies, even by `kill -9`, so a lock file left
by a dead run is simply taken over (with a note naming the dead pid). The file is removed when the
run ends, and a directory the lock had to create is removed again if the run left it empty, so a
run refused for bad input leaves out_dir as it was. Without fcntl (Windows) there is no lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from tinygrad_gpt.cli import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = "train.lock"


class RunLock:
    """An exclusive lock on a run's out_dir, held from `acquire` (or `with`) until `release`."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # directories made for the lock, deepest last
        self.stale_pid: str | None = None  # the pid in a lock file left by a process that died

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self, create: bool = True) -> None:
        """Take the lock, creating out_dir if needed (without `create`, a missing out_dir is left to the caller).

        Raises:
            UsageError: another process holds it (naming its pid), or out_dir cannot be created.
        """
        if fcntl is None or (not create and not self.out_dir.is_dir()):
            return
        self._make_dirs()
        while True:  # retried when the holder removed the file between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                self._remove_dirs()
                raise UsageError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd) or "unknown"
                os.close(fd)
                self._remove_dirs()
                raise UsageError(
                    f"{self.out_dir} is in use by another training run (pid {holder} holds {self.path}); "
                    "wait for it to finish, or pick another --out_dir"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self.stale_pid = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (then an emptied directory the lock created)."""
        if self.fd is not None:
            Path(self.path).unlink(missing_ok=True)  # before the unlock, so no one locks a file about to vanish
            os.close(self.fd)
            self.fd = None
        self._remove_dirs()

    def _make_dirs(self) -> None:
        missing, d = [], self.out_dir
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --out_dir {self.out_dir}: {e.strerror or e}") from None
        self.created = missing[::-1]

    def _remove_dirs(self) -> None:
        for d in reversed(self.created):
            try:
                d.rmdir()  # only if empty: a run that wrote something keeps its directory
            except OSError:
                break
        self.created = []


def _read_pid(fd: int) -> str | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
