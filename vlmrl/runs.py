"""Run directories: ``runs/<task>__<labeler>__<seed>__<time>/`` and what lives inside.

Layout::

    config.yaml            resolved config (every default filled in, overrides applied)
    tb/                    TensorBoard logs
    checkpoints/step_N/    model.zip, reward_net.{safetensors,json}, label_buffer.npz,
                           replay_buffer.pkl (SAC), state.json
    model.zip              final policy
    reward_net.*           final distilled reward net (when distilling)
    eval.json              true-return evaluation of the final policy
    videos/                rollout videos
    .lock                  held by the process training in it (see :func:`run_dir_lock`)
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from vlmrl.config import ExperimentConfig, load_config
from vlmrl.errors import UserError
from vlmrl.locks import OutputLock

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


def create_run_dir(config: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.run.root) / f"{config.task}__{config.labeler.name}__{config.run.seed}__{stamp}"
    run_dir = base
    suffix = 1
    while run_dir.exists():
        run_dir = base.with_name(f"{base.name}-{suffix}")
        suffix += 1
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    return run_dir


def load_run_config(run_dir: str | Path) -> ExperimentConfig:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a vlmrl run directory: {CONFIG_FILE} is missing")
    return load_config(run_dir / CONFIG_FILE)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:010d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with a state.json), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / "state.json").is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def finish_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Mark a checkpoint complete (state.json written last) and drop all but the newest few."""
    (directory / "state.json").write_text(json.dumps(state, indent=2))
    for old in list_checkpoints(directory.parent.parent)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "state.json").read_text())


def label_store_path(config: ExperimentConfig, run_dir: Path) -> Path:
    """The label store of a pairwise run: ``preference.label_store``, else ``labels.sqlite`` in the run directory."""
    return Path(config.preference.label_store or Path(run_dir) / "labels.sqlite")


def policy_path(run_dir: Path) -> Path:
    """The newest saved policy of a run: the final ``model.zip``, else the latest checkpoint's."""
    run_dir = Path(run_dir)
    final = run_dir / "model.zip"
    if final.is_file():
        return final
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        return latest / "model.zip"
    raise UserError(f"{run_dir} holds no saved policy (no model.zip and no complete checkpoint)")


def run_dir_lock(run_dir: str | Path, resume_command: str | None = None) -> OutputLock:
    """Claim ``run_dir`` for this process: a :class:`UserError` at once if another ``vlmrl train``
    is writing it (e.g. a second ``--resume`` of the same run), else the held lock.

    A lock left by a killed process is taken over. ``resume_command``: how the run continues,
    for the message (default: ``vlmrl train --resume RUN_DIR``). The lock is released by
    ``release()``, at the end of a ``with`` block, when the returned object is garbage-collected
    (so holding it in a local variable holds it until the function returns), or at interpreter exit.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such folder)")
    resume_command = resume_command or f"vlmrl train --resume {run_dir}"
    hint = f"once it has stopped, `{resume_command}` continues the run"
    return OutputLock(run_dir / LOCK_FILE, "train", str(run_dir), hint=hint, create_folder=False).acquire()
