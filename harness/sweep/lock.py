"""One writer per sweep folder, and folder problems said in one line before anything runs.

``sweep_lock`` takes an OS file lock (``fcntl.flock``) for the whole run on a file named by the
sweep folder's real path, in the system's temporary folder (``lock_path``); the kernel releases it
on any exit, SIGKILL included, so a stale lock cannot outlive its process. A second ``batchscale
sweep`` of the same folder on the same machine is refused at once, naming the process that holds
it. Nothing is written into the results for it, so a sweep refused before its first write leaves
no trace there. ``interrupts_as_ctrl_c`` turns SIGHUP and SIGTERM
into the Ctrl-C path, so the session record still ends with a status and an end time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from harness.errors import ResultsFolderError


def check_name(name: str) -> str:
    """A sweep's name is one folder inside the results folder: no separators, no '..', not hidden."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ResultsFolderError(f"--name {name!r} is not allowed: a sweep's name is one folder name inside the "
                                 "results folder (letters, digits, '-', '_'; no '/', not starting with '.')")
    return name


def check_folder(root: Path) -> None:
    """The results folder and the sweep's folder can be created and written, or one line says why."""
    root = Path(root)
    for path in (root.parent, root):
        if path.exists() and not path.is_dir():
            raise ResultsFolderError(f"{path} is a file, not a folder; give another --results or --name")
    existing = next(p for p in (root, root.parent, *root.parent.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResultsFolderError(f"{existing} is not writable by this user; give another --results")
    if root.is_dir():
        for part in ("sweep.json", "trials.parquet", "measurements.parquet"):
            f = root / part
            if f.exists() and not os.access(f, os.W_OK):
                raise ResultsFolderError(f"{f} is read-only; the sweep cannot record into {root} (copy it elsewhere, "
                                         "or give another --name)")


def lock_path(root: Path) -> Path:
    """The lock file of a sweep folder: in the system's temporary folder, named by the folder's real
    path, so that taking it writes nothing into the results (a sweep refused later leaves no trace)."""
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / "batchscale-locks" / f"{key}.lock"


@contextlib.contextmanager
def sweep_lock(root: Path) -> Iterator[Path]:
    """Hold the sweep folder's lock for the duration; refuse in one line when another process does."""
    root, path = Path(root), lock_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise ResultsFolderError(f"{path.parent}: cannot create the sweep's lock file ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ResultsFolderError(f"{root} is in use by {holder}: one sweep writes a folder at a time; wait for "
                                     "it to end, or give another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (batchscale sweep of {os.path.realpath(root)})".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def interrupts_as_ctrl_c(signals=(signal.SIGHUP, signal.SIGTERM)) -> Iterator[None]:
    """SIGHUP (the terminal closed) and SIGTERM end the sweep as Ctrl-C does: the running trials'
    records kept, Ray shut down, the session recorded as interrupted with its end time."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
