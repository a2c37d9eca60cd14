"""``vlmrl.locks``: one writer per output, across real processes, and stale locks taken over;
``check_writable_dir`` against real unwritable locations."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from vlmrl.errors import UserError
from vlmrl.locks import OutputLock, check_writable_dir, pid_alive

REPO = Path(__file__).resolve().parents[1]

# A process that takes the lock, says so, and holds it until killed (or for `hold` seconds).
HOLDER = """
import sys, time
from vlmrl.errors import UserError
from vlmrl.locks import OutputLock
from vlmrl.runs import run_dir_lock
kind, path, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    lock = run_dir_lock(path) if kind == "run" else OutputLock(path, "relabel", "pendulum/x-v0").acquire()
except UserError as error:
    print("refused:", error, flush=True)
    sys.exit(2)
print("locked", (lock.took_over or {}).get("pid"), flush=True)
time.sleep(hold)
"""


def start_holder(kind: str, path: Path, hold: float = 60.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path), str(hold)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)


def wait_locked(process: subprocess.Popen) -> str:
    line = process.stdout.readline()
    assert line.startswith("locked"), line
    return line


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()  # reaped: its pid is really gone


@pytest.mark.parametrize("kind", ["relabel", "run"])
def test_a_second_process_is_refused_and_a_killed_owner_is_taken_over(tmp_path, kind):
    """`relabel` locks a work folder file; `run` is `run_dir_lock` (two `vlmrl train --resume`)."""
    target = tmp_path / "run" if kind == "run" else tmp_path / ".relabel-x" / "lock"
    if kind == "run":
        target.mkdir()
    lock_file = target / ".lock" if kind == "run" else target
    first = start_holder(kind, target)
    try:
        wait_locked(first)
        record = json.loads(lock_file.read_text())
        assert record["pid"] == first.pid and record["host"] == socket.gethostname() and record["started"]

        second = start_holder(kind, target)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 2
        what = f"train (pid {first.pid}) is writing {target}" if kind == "run" else \
            f"relabel (pid {first.pid}) is writing pendulum/x-v0"
        assert f"refused: another {what}" in out
    finally:
        kill(first)
    assert lock_file.exists()  # SIGKILL: no chance to clean up

    third = start_holder(kind, target, hold=0)
    out, _ = third.communicate(timeout=60)
    assert third.returncode == 0 and out.split() == ["locked", str(first.pid)]  # took over from the dead owner
    assert not lock_file.exists()  # released at exit


def test_only_one_of_several_processes_takes_over_a_stale_lock(tmp_path):
    lock_file = tmp_path / "lock"
    lock_file.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "long ago"}))
    racers = [start_holder("relabel", lock_file, hold=5) for _ in range(4)]
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]
    winners = [out for out in outputs if out.startswith("locked")]
    assert len(winners) == 1, outputs
    assert all("refused: another relabel" in out for out in outputs if not out.startswith("locked")), outputs


def test_released_lock_is_removed_and_the_lock_can_be_taken_again(tmp_path):
    path = tmp_path / "work" / "lock"
    with OutputLock(path, "relabel", "a/b-v0") as lock:
        assert lock.held and path.is_file()
    assert not path.exists()
    with OutputLock(path, "relabel", "a/b-v0"):
        assert path.is_file()
    assert not path.exists()


def test_release_never_removes_another_owners_lock(tmp_path):
    path = tmp_path / "lock"
    lock = OutputLock(path, "relabel", "a/b-v0").acquire()
    # The file now belongs to someone else (e.g. taken over while we were stopped).
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "token": "other"}))
    lock.release()
    assert path.is_file()


def test_lock_of_another_host_is_not_taken_over_and_names_the_file(tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"pid": 1, "host": "some-other-host", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(UserError, match=r"another relabel \(pid 1 on host some-other-host\) is writing a/b-v0.*"
                                        rf"if that process is gone, delete {path}"):
        OutputLock(path, "relabel", "a/b-v0").acquire()


def test_empty_lock_file_left_by_a_crash_between_create_and_write_is_stale(tmp_path):
    path = tmp_path / "lock"
    path.write_text("")
    old = time.time() - 60
    os.utime(path, (old, old))
    lock = OutputLock(path, "relabel", "a/b-v0").acquire()
    assert lock.took_over["pid"] == 0 and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_recycled_pid_is_not_mistaken_for_the_owner(tmp_path):
    """Same pid as a live process, but another start time: the owner is gone."""
    path = tmp_path / "lock"
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "pid_start": "1"}))
    assert pid_alive(os.getppid()) and not pid_alive(os.getppid(), "1")
    assert OutputLock(path, "relabel", "a/b-v0").acquire().took_over["pid"] == os.getppid()


def test_run_dir_lock_refuses_a_missing_run_directory(tmp_path):
    from vlmrl.runs import run_dir_lock

    with pytest.raises(UserError, match="is not a run directory"):
        run_dir_lock(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


# -- writable locations --------------------------------------------------------------------------


@contextmanager
def read_only(folder: Path):
    """Make ``folder`` really read-only, for root too: ``chattr +i`` (the immutable flag, which
    root respects) when running as root, plain ``chmod`` otherwise; skip where neither works."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without a working `chattr +i`: no read-only folder that root respects")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_check_writable_dir_refuses_a_file_in_the_path(tmp_path):
    (tmp_path / "datasets").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write dataset 'a/b-v0' to .*datasets/a: .*datasets is a file, not a folder"):
        check_writable_dir(tmp_path / "datasets" / "a", "dataset 'a/b-v0'")


def test_check_writable_dir_refuses_a_read_only_folder_and_creates_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        with pytest.raises(UserError, match=f"cannot write the run to {folder}/new/run: .*{folder}"):
            check_writable_dir(folder / "new" / "run", "the run")
    assert list(folder.iterdir()) == []
    check_writable_dir(folder / "new" / "run", "the run")  # writable again: no error, still nothing created
    assert list(folder.iterdir()) == []


def test_run_dir_lock_held_in_a_local_variable_is_released_when_the_function_returns(tmp_path):
    """How ``vlmrl train`` holds it: ``lock = run_dir_lock(run_dir)`` at the top of ``run()``."""
    from vlmrl.runs import run_dir_lock

    def train_like(fail: bool) -> None:
        lock = run_dir_lock(tmp_path)  # noqa: F841
        assert (tmp_path / ".lock").is_file()
        if fail:
            raise UserError("bad input found after locking")

    train_like(fail=False)
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(UserError):
        train_like(fail=True)
    assert not (tmp_path / ".lock").exists()
