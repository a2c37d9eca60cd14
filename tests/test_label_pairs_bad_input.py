"""``vlmrl label-pairs`` on bad input: exit 2 with a message naming the file, and an inspection
never writes to the store (real files: an empty file, another program's SQLite database, a folder,
an immutable store)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from vlmrl.cli import main
from vlmrl.label_store import LabelStore


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def filled_store(path: Path) -> Path:
    with LabelStore(path) as store:
        store.put("k", first_hash="a" * 64, second_hash="b" * 64, goal="g", config_json="{}", status="answered",
                  label=1.0, analysis=None, answer="0", error=None, true_rewards=(1.0, 0.0))
    return path


def test_empty_file_is_refused_and_left_empty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "labels.sqlite"
    empty.write_bytes(b"")
    assert main(["label-pairs", str(empty)]) == 2
    assert "is empty, not a label store" in capsys.readouterr().err
    assert empty.stat().st_size == 0


def test_another_programs_database_is_refused_and_not_modified(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "inventory.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE parts (name TEXT)")
    before = digest(other)
    assert main(["label-pairs", str(other)]) == 2
    assert "holds no 'labels' table" in capsys.readouterr().err
    assert digest(other) == before


def test_folder_missing_file_and_missing_oracle_file_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["label-pairs", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["label-pairs", str(tmp_path / "nope.sqlite")]) == 2
    assert "no such file" in capsys.readouterr().err
    store = filled_store(tmp_path / "labels.sqlite")
    assert main(["label-pairs", str(store), "--oracle-rewards", str(tmp_path / "rewards.json")]) == 2
    assert "--oracle-rewards: no such file" in capsys.readouterr().err


def test_outputs_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = filled_store(tmp_path / "labels.sqlite")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    for option in ("--export", "--grid"):
        assert main(["label-pairs", str(store), option, str(blocker / "out" / "rows.csv")]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {option}" in err and "is a file, not a folder" in err


def test_inspecting_does_not_write_and_works_on_a_read_only_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "archived_run"
    store = filled_store(folder / "labels.sqlite")
    for side in folder.glob("labels.sqlite-*"):  # as an archived run would be: no WAL side files
        side.unlink()
    before = digest(store)
    assert main(["label-pairs", str(store)]) == 0
    assert "1 pairs" in capsys.readouterr().out
    assert digest(store) == before
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available here (root ignores plain permissions)")
    try:
        assert main(["label-pairs", str(store)]) == 0
        assert "1 pairs" in capsys.readouterr().out
        assert main(["label-pairs", str(store), "--reparse"]) == 2
        assert "cannot write --reparse" in capsys.readouterr().err
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
