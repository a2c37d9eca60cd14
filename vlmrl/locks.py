"""Claiming an output before writing it: is its location writable, and is anyone else writing it?

:func:`check_writable_dir` probes a folder with a real write (``os.access`` alone is not enough:
it says yes to root on an immutable folder, and knows nothing of read-only mounts or full disks).

:class:`OutputLock` makes one process the only writer of an output (a relabel's work folder, a
training run directory). The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local
filesystems) holding JSON ``{pid, host, started, token, ...}``. A second writer reads it and
stops with a :class:`~vlmrl.errors.UserError` that names the owner. A lock left by a process that
died (SIGKILL, power loss) is *stale*: same host and that pid no longer running (or running a
different program that got the pid recycled, told apart by the process start time). A stale lock
is taken over, so a crash never blocks an output forever. Takeovers are serialised by a
short-lived second file (``<lock>.takeover``), so two processes that both find the same stale
lock cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from vlmrl.errors import UserError

TAKEOVER_SUFFIX = ".takeover"
TAKEOVER_STALE_S = 30.0  # a takeover is a few file operations; one older than this was interrupted
EMPTY_LOCK_GRACE_S = 2.0  # an owner writes its JSON right after creating the file


# -- is the location writable? ---------------------------------------------------------------------


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | Path, what: str) -> None:
    """Raise a :class:`UserError` unless a folder can be created or written at ``path``.

    Nothing is created: the nearest existing ancestor must be a folder that accepts a new file
    (checked with ``os.access`` and then a real probe file, removed at once; the probe is what
    catches an immutable folder, a read-only mount or a full disk, even for root).

    Args:
        path: the folder that will be written (it may not exist yet).
        what: what will be written there, for the message (e.g. ``"dataset 'pendulum/x-v0'"``).
    """
    path = Path(path)
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"cannot write {what} to {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} to {path}: no write permission on {existing}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".vlmrl-write-probe-", dir=existing)
        try:
            os.write(handle, b"0")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise UserError(f"cannot write {what} to {path}: {existing} is not writable ({error.strerror})") from error


# -- one writer per output --------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` (clock ticks since boot, Linux ``/proc``), or None where unknown.

    Stored with the lock so a pid recycled by an unrelated process is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host still runs (and, given ``start``, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if _process_state(pid) in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    if start is not None:
        current = _process_start(pid)
        if current is not None and current != start:
            return False  # the pid now belongs to another process
    return True


class OutputLock:
    """An exclusive, crash-safe claim on one output.

    Use as a context manager, or call :meth:`acquire` / :meth:`release`. A lock still held when
    the object is garbage-collected or the interpreter exits is released then (a process killed
    outright leaves a stale lock, which the next writer takes over).

    Args:
        path: the lock file (its folder is created when missing).
        purpose: the command that writes, for messages (``"relabel"``, ``"train"``).
        target: what is written, for messages (a dataset id, a run directory).
        hint: appended to the message a second writer gets (e.g. how to resume or discard).
        create_folder: create the lock's folder when missing (else it must exist).
    """

    def __init__(self, path: str | Path, purpose: str, target: str, hint: str = "", create_folder: bool = True) -> None:
        self.path = Path(path)
        self.create_folder = create_folder
        self.purpose = purpose
        self.target = target
        self.hint = hint
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None  # the stale owner's record, when taken over
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> OutputLock:
        """Take the lock, taking over a stale one; a :class:`UserError` if a live process holds it."""
        if self.held:
            return self
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "pid_start": _process_start(os.getpid()), "purpose": self.purpose, "target": self.target,
                  "token": self.token}
        for _ in range(50):  # each round ends in success, an error, or a lost race to retry
            if self._create(record):
                self._finalizer = weakref.finalize(self, _release, self.path, self.token)
                return self
            owner = self._read_owner()
            if owner is None:
                continue  # released (or being written) meanwhile: try again
            if not self._is_stale(owner):
                raise UserError(self._busy_message(owner))
            if self._take_over(owner, record):
                self.took_over = owner
                self._finalizer = weakref.finalize(self, _release, self.path, self.token)
                return self
        raise UserError(f"could not lock {self.path} for {self.purpose} of {self.target}: it keeps changing; "
                        "is another process writing it in a loop?")

    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    # -- internals ----------------------------------------------------------------------------------

    def _create(self, record: dict[str, Any]) -> bool:
        """Create the lock file holding ``record``; False when it exists (or vanished mid-way)."""
        if self.create_folder:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot lock {self.target}: cannot create folder {self.path.parent} "
                                f"({error.strerror})") from error
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError as error:
            if not self.create_folder:
                raise UserError(f"cannot lock {self.target}: folder {self.path.parent} does not exist") from error
            return False  # the folder was removed by a writer that just finished: retry
        except OSError as error:
            raise UserError(f"cannot lock {self.target}: cannot create {self.path} ({error.strerror})") from error
        with os.fdopen(handle, "w") as file:
            json.dump(record, file)
            file.flush()
            os.fsync(file.fileno())
        return True

    def _read_owner(self) -> dict[str, Any] | None:
        """The current owner's record; None when the file is gone. A file that stays empty or
        unparseable past a grace period (its writer died between create and write) reads as a
        record with pid 0, which is stale."""
        deadline = time.monotonic() + EMPTY_LOCK_GRACE_S
        while True:
            try:
                text = self.path.read_text()
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            try:
                owner = json.loads(text)
                if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
                    return owner
            except json.JSONDecodeError:
                pass
            if age > EMPTY_LOCK_GRACE_S or time.monotonic() > deadline:
                return {"pid": 0, "host": socket.gethostname(), "unreadable": text[:200]}
            time.sleep(0.05)

    def _is_stale(self, owner: dict[str, Any]) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # cannot see processes of another machine: assume it runs
        return not pid_alive(int(owner["pid"]), owner.get("pid_start"))

    def _take_over(self, stale: dict[str, Any], record: dict[str, Any]) -> bool:
        """Replace the stale lock by ours, one taker at a time; False if someone else won."""
        guard = self.path.with_name(self.path.name + TAKEOVER_SUFFIX)
        try:
            handle = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                    guard.unlink()  # its taker died mid-takeover
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return False
        except FileNotFoundError:
            return False
        os.close(handle)
        try:
            if self._read_owner() != stale:  # changed since we judged it stale
                return False
            self.path.unlink(missing_ok=True)
            return self._create(record)
        finally:
            guard.unlink(missing_ok=True)

    def _busy_message(self, owner: dict[str, Any]) -> str:
        purpose = owner.get("purpose") or self.purpose
        where = "" if owner.get("host") == socket.gethostname() else f" on host {owner.get('host')}"
        since = f" (since {owner['started']})" if owner.get("started") else ""
        message = f"another {purpose} (pid {owner['pid']}{where}) is writing {self.target}{since}"
        if where:
            message += f"; if that process is gone, delete {self.path}"
        else:
            message += f"; wait for it to finish or stop it (kill {owner['pid']})"
        return message + (f"; {self.hint}" if self.hint else "")


def _release(path: Path, token: str) -> None:
    """Remove ``path`` if it still holds ``token`` (never another process's lock)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if isinstance(owner, dict) and owner.get("token") == token:
        path.unlink(missing_ok=True)
