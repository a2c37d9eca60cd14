"""Offline RL-VLM-F inside ``vlmrl relabel``: random frame pairs -> preference labels (through the
label store) -> a Bradley-Terry ensemble, saved so every frame can then be rewarded with it.

With ``--engine ray`` and a VLM labeler, Ray actors ask and this process commits each answer to
the store; the labels, and so the model, are the same as with the local engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.agents.preference_config import PreferenceLearningConfig
from vlmrl.config import RelabelConfig
from vlmrl.errors import UserError
from vlmrl.relabel_core import FrameIndex, LabelerSpec, atomic_write_bytes, sample_pairs

MODEL_NAME = "reward_model"
SUMMARY_NAME = "labels.json"


def default_label_store() -> Path:
    """Shared by all relabels: keys hold frame hashes, goal and labeler config, so labels never mix."""
    from vlmrl.datasets import datasets_root

    return datasets_root() / ".label_stores" / "labels.sqlite"


def label_store_path(pref: PreferenceLearningConfig) -> Path:
    """The label store of a pairwise relabel: ``preference.label_store``, else the shared default."""
    return Path(pref.label_store) if pref.label_store else default_label_store()


def check_label_store(path: Path) -> None:
    """Before any pair is labelled: ``preference.label_store`` must be a SQLite file (or an empty
    or missing one) in a folder this process can write (SQLite writes side files beside it).

    Raises:
        UserError: naming the file and what is wrong with it.
    """
    from vlmrl.label_store import SQLITE_HEADER, file_header
    from vlmrl.locks import check_writable_dir

    where = f"preference.label_store: {path}"
    if path.is_dir():
        raise UserError(f"{where} is a folder, not a SQLite label store file")
    if path.exists():
        try:
            header = file_header(path)
        except OSError as error:
            raise UserError(f"{where}: cannot read it ({error.strerror})") from error
        if header and header != SQLITE_HEADER:
            raise UserError(f"{where} is not a SQLite label store (its first bytes are {header[:16]!r}); "
                            "point preference.label_store at a new file or an existing store")
        if not os.access(path, os.W_OK):
            raise UserError(f"{where}: no write permission")
    check_writable_dir(path.parent, "the label store")


def fit_preference_model(dataset: Any, config: RelabelConfig, index: FrameIndex, work: Path, show_progress: bool,
                         engine: str = "local", ray_options: Any = None) -> tuple[LabelerSpec, dict[str, Any]]:
    """Label pairs, fit the ensemble and save it in the folder ``work``; a finished fit found
    there is reused. Returns the spec that rewards frames with it and the label summary."""
    import torch
    from tqdm import tqdm

    from vlmrl.datasets import gather_frames
    from vlmrl.factory import make_labeler
    from vlmrl.reward_learning import fit_bradley_terry, preference_fit_labels
    from vlmrl.reward_nets import RewardModel

    pref, labeler_config = config.preference, config.labeler
    inputs = "observations" if pref.net.kind == "mlp" else "frames"
    device = labeler_config.device
    store_path = label_store_path(pref)
    if len(index.usable) < 2:
        raise UserError(f"dataset {dataset.name!r} has fewer than two frames to compare")
    model_path = work / MODEL_NAME
    summary_path = work / SUMMARY_NAME
    if summary_path.is_file() and model_path.with_suffix(".json").is_file():
        return LabelerSpec.for_reward_model(model_path, inputs, device), json.loads(summary_path.read_text())

    on_ray = engine == "ray" and labeler_config.needs_frames
    if on_ray and hasattr(labeler_config, "store_key_config"):
        from vlmrl.reward_labelers.preference import StoreLedger

        # The model loads in the Ray actors only; this process just needs its store keys.
        labeler = StoreLedger(labeler_config.store_key_config(), store_path)
    else:
        labeler = make_labeler(labeler_config, "pair", seed=config.seed, store=store_path)
    rng = np.random.default_rng(config.seed)
    rounds = (pref.budget + pref.pairs_per_round - 1) // pref.pairs_per_round
    pairs = [sample_pairs(index.usable, min(pref.pairs_per_round, pref.budget - r * pref.pairs_per_round), rng)
             for r in range(rounds)]
    if on_ray:
        from vlmrl.relabel_ray import label_pairs_on_ray

        answers = label_pairs_on_ray(labeler, labeler_config, pref.goal, dataset, config.frames_key, pairs,
                                     index.true_rewards, ray_options, show_progress)
    else:
        answers = []
        for batch in tqdm(pairs, desc="preference labels", unit="round", disable=not show_progress):
            first = gather_frames(dataset, config.frames_key, batch[:, 0]) if labeler_config.needs_frames else None
            second = gather_frames(dataset, config.frames_key, batch[:, 1]) if labeler_config.needs_frames else None
            true = (index.true_rewards[batch[:, 0]], index.true_rewards[batch[:, 1]])
            answers.append(_compare(labeler, first, second, pref.goal, true))
    pairs_all = np.concatenate(pairs)
    labels_all, p_first, p_second = (np.concatenate([a[k] for a in answers]).astype(np.float32) for k in range(3))
    # What the fit learns from: hard labels, or the answer probabilities (soft), minus low-confidence answers.
    fit_labels = preference_fit_labels(labels_all, p_first, p_second, mode=pref.label_confidence,
                                       min_confidence=pref.min_confidence)
    keep = ~np.isnan(fit_labels)
    if not keep.any():
        raise UserError(f"no usable preference label among {len(labels_all)} pairs (all unsure, failed or identical); "
                        f"check the labeler and the label store {store_path}")

    if inputs == "observations":
        net_config = pref.net.net_config(obs_dim=index.observations.shape[1])
        first_in, second_in = index.observations[pairs_all[keep, 0]], index.observations[pairs_all[keep, 1]]
    else:
        net_config = pref.net.net_config()
        first_in = gather_frames(dataset, config.frames_key, pairs_all[keep, 0])
        second_in = gather_frames(dataset, config.frames_key, pairs_all[keep, 1])
    model = RewardModel(net_config, ensemble_size=pref.net.ensemble_size, device=device, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        fit = fit_bradley_terry(model, first_in, second_in, fit_labels[keep], pref.fit, seed=config.seed)
    model.save(model_path)
    counts = {
        "pairs_queried": int(len(labels_all)),
        "pairs_labelled": int(keep.sum()),
        "pairs_discarded": int((~keep).sum()),
        "pairs_below_min_confidence": int((np.isfinite(labels_all) & ~keep).sum()),
        "ties": int((labels_all == 0.5).sum()),
    }
    # Wall-clock time is left out: the metadata must not depend on when or how fast it ran.
    metrics = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in fit.metrics().items()
               if "second" not in k}
    info = {"label_store": str(store_path.resolve()), "counts": counts, "reward_fit": metrics}
    atomic_write_bytes(summary_path, json.dumps(info, sort_keys=True).encode())
    return LabelerSpec.for_reward_model(model_path, inputs, device), info


def _compare(labeler: Any, first: Any, second: Any, goal: str, true: tuple) -> tuple[np.ndarray, ...]:
    """``(labels, p_first, p_second)`` of one round; the scripted teacher has no probabilities (NaN)."""
    if hasattr(labeler, "compare_with_confidence"):
        return labeler.compare_with_confidence(first, second, goal, true_rewards=true)
    labels = np.asarray(labeler.compare(first, second, goal, true_rewards=true), dtype=np.float32)
    return labels, np.full_like(labels, np.nan), np.full_like(labels, np.nan)

