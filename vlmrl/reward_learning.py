"""Training a :class:`~vlmrl.reward_nets.RewardModel`: distillation by regression, preferences by Bradley-Terry.

Both fits continue from the model's current weights with a fresh Adam optimiser, so they can be
called again and again on a growing dataset inside an RL loop. Each ensemble member walks the
training data in its own random order. A held-out fraction (drawn afresh on every call from
``seed``) is never trained on in that call and gives the reported held-out metrics; across calls
it may overlap data trained on earlier, so treat it as a diagnostic, not a test set.

The first fit of an MLP model also fixes its state standardisation (see
:meth:`RewardModel.set_state_normaliser`). Training uses however many torch threads the process
allows; on a small shared CPU, ``torch.set_num_threads(1)`` can be several times faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_nets import RewardModel

REGRESSION_FIT = FitConfig(epochs=5, batch_size=256)
"""``fit_regression``'s default: distillation targets are plentiful and cheap, so fewer, larger steps."""


@dataclass(frozen=True)
class FitResult:
    """Metrics of one fit call.

    Attributes:
        objective: ``"regression"`` or ``"bradley_terry"``.
        epochs: passes over the training split.
        steps: gradient steps taken by each member.
        n_train, n_heldout: items (frames or labelled pairs) in each split.
        n_unlabelled: pairs dropped because their label was NaN (Bradley-Terry only).
        train_loss: mean over members of the last epoch's mean batch loss (regression: MSE in
            standardised target units; Bradley-Terry: cross-entropy in nats).
        heldout_loss: the same loss for the ensemble-mean prediction on the held-out split.
        heldout_pearson: regression: Pearson correlation of predictions and held-out targets.
        heldout_accuracy: Bradley-Terry: fraction of held-out pairs (ties excluded) whose
            preferred item gets the higher ensemble-mean reward.
        train_accuracy: the same on the training split.
        seconds: wall-clock duration of the call.
        NaN marks a metric that does not apply or had no data.
    """

    objective: str
    epochs: int
    steps: int
    n_train: int
    n_heldout: int
    train_loss: float
    heldout_loss: float
    seconds: float
    n_unlabelled: int = 0
    heldout_pearson: float = math.nan
    heldout_accuracy: float = math.nan
    train_accuracy: float = math.nan

    def metrics(self) -> dict[str, float]:
        """Numeric fields, for a logger."""
        return {k: float(v) for k, v in asdict(self).items() if k != "objective"}


def _split(n: int, heldout_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, heldout) index arrays; the training split keeps at least one item."""
    order = rng.permutation(n)
    n_heldout = min(int(n * heldout_fraction), n - 1)
    return order[n_heldout:], order[:n_heldout]


def _member_orders(n: int, ensemble_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(n) for _ in range(ensemble_size)]


def _init_state_normaliser(model: RewardModel, prepared: torch.Tensor) -> None:
    """The first fit of an MLP model fixes its input standardisation."""
    if model.config.kind == "mlp" and model.state_mean is None:
        model.set_state_normaliser(prepared)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _fit_result(objective: str, fit: FitConfig, steps_per_epoch: int, train_idx: np.ndarray, heldout_idx: np.ndarray,
                train_loss: float, heldout_loss: float, start_time: float, **metrics: float) -> FitResult:
    """The bookkeeping every fit reports (steps, split sizes, losses, seconds) plus its objective's own metrics."""
    return FitResult(objective=objective, epochs=fit.epochs, steps=fit.epochs * steps_per_epoch, n_train=len(train_idx),
                     n_heldout=len(heldout_idx), train_loss=train_loss, heldout_loss=heldout_loss,
                     seconds=time.perf_counter() - start_time, **metrics)


def _train_members(
    model: RewardModel,
    train_idx: np.ndarray,
    member_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    fit: FitConfig,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """Adam on every member, each with its own shuffle of ``train_idx`` per epoch.

    Returns (gradient steps per epoch, mean batch loss of the last epoch averaged over members).
    """
    batch_size = fit.batch_size
    optimizer = torch.optim.Adam(model.members.parameters(), lr=fit.lr)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    epoch_loss = math.nan
    for _ in range(fit.epochs):
        orders = [train_idx[o] for o in _member_orders(len(train_idx), model.ensemble_size, rng)]
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for member, order in zip(model.members, orders):
                loss = member_loss(member, torch.as_tensor(order[step * batch_size : (step + 1) * batch_size]))
                loss.backward()
                total += loss.item()
            optimizer.step()
            loss_sum += total / model.ensemble_size
        epoch_loss = loss_sum / steps_per_epoch
    return steps_per_epoch, epoch_loss


def fit_regression(
    model: RewardModel,
    inputs: np.ndarray,
    targets: np.ndarray,
    fit: FitConfig = REGRESSION_FIT,
    *,
    seed: int = 0,
) -> FitResult:
    """Distil a per-item reward (e.g. CLIP scores of frames) into the model by MSE.

    Targets are standardised with the training split's mean and standard deviation, which are
    stored in ``model.target_mean`` / ``model.target_std`` so :meth:`RewardModel.predict`
    returns rewards in the targets' units.

    Args:
        model: trained in place, from its current weights.
        inputs: cnn: uint8 frames ``[N, H, W, 3]``; mlp: float states ``[N, obs_dim]``.
        targets: float ``[N]`` rewards, all finite.
        fit: epochs, batch size (items per gradient step and member), learning rate and
            held-out share (items kept out of training for the held-out metrics).
        seed: seeds the split and the members' shuffles.
    """
    start_time = time.perf_counter()
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 1 or len(targets) != len(inputs):
        raise ValueError(f"targets must have shape [{len(inputs)}] to match the inputs, got {targets.shape}")
    if len(targets) == 0:
        raise ValueError("fit_regression needs at least one item")
    if not np.all(np.isfinite(targets)):
        raise ValueError("targets contain NaN or infinite values")

    prepared = model.prepare(inputs)
    _init_state_normaliser(model, prepared)
    rng = np.random.default_rng(seed)
    train_idx, heldout_idx = _split(len(targets), fit.heldout_fraction, rng)
    mean = float(targets[train_idx].mean())
    std = float(targets[train_idx].std())
    model.target_mean, model.target_std = mean, (std if std > 1e-8 else 1.0)
    z = torch.as_tensor((targets - model.target_mean) / model.target_std, dtype=torch.float32)

    def member_loss(member: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        x = model.to_network_input(prepared[idx])
        return F.mse_loss(model.output_scale * member(x), z[idx].to(model.device))

    steps_per_epoch, last_epoch_loss = _train_members(model, train_idx, member_loss, fit, rng)

    heldout_loss = heldout_pearson = math.nan
    if len(heldout_idx) > 0:
        predicted = model.predict(prepared[torch.as_tensor(heldout_idx)])
        actual = targets[heldout_idx]
        heldout_loss = float(np.mean(((predicted - actual) / model.target_std) ** 2))
        heldout_pearson = _pearson(predicted, actual)
    return _fit_result("regression", fit, steps_per_epoch, train_idx, heldout_idx, last_epoch_loss, heldout_loss,
                       start_time, heldout_pearson=heldout_pearson)


def _preference_metrics(
    model: RewardModel, first: torch.Tensor, second: torch.Tensor, labels: np.ndarray
) -> tuple[float, float]:
    """(cross-entropy, accuracy) of the ensemble-mean reward on prepared pairs; ties skip accuracy."""
    r1 = model.predict(first)
    r2 = model.predict(second)
    logits = torch.as_tensor((r1 - r2) / model.target_std, dtype=torch.float64)
    loss = F.binary_cross_entropy_with_logits(logits, torch.as_tensor(labels, dtype=torch.float64)).item()
    decisive = labels != 0.5
    accuracy = float(np.mean((r1 > r2)[decisive] == (labels > 0.5)[decisive])) if decisive.any() else math.nan
    return loss, accuracy


LABEL_CONFIDENCE_MODES = ("hard", "soft")


def preference_fit_labels(
    labels: np.ndarray,
    p_first: np.ndarray | None = None,
    p_second: np.ndarray | None = None,
    mode: str = "hard",
    min_confidence: float = 0.0,
) -> np.ndarray:
    """The labels a Bradley-Terry fit should learn from, given how sure each answer was.

    Args:
        labels: float ``[N]`` preference labels (1.0 first preferred, 0.0 second, 0.5 equal,
            NaN none), as a labeler returns them.
        p_first, p_second: float ``[N]`` P(image 1 better) / P(image 2 better) of each answer
            (``PreferenceLabeler.compare_with_confidence``), NaN where unknown; None = all unknown.
        mode: ``"hard"`` keeps the labels; ``"soft"`` replaces the label of every labelled pair
            with known probabilities by ``p_first / (p_first + p_second)``.
        min_confidence: labelled pairs with known probabilities and
            ``max(p_first, p_second) < min_confidence`` become NaN (dropped by the fit and
            counted in ``n_unlabelled``); 0 drops none.

    Returns:
        float64 ``[N]``. Pairs without probabilities, and unlabelled (NaN) pairs, are returned
        as given: confidence never turns a missing label into one.
    """
    if mode not in LABEL_CONFIDENCE_MODES:
        raise ValueError(f"mode must be one of {LABEL_CONFIDENCE_MODES}, got {mode!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    out = np.array(labels, dtype=np.float64, copy=True).reshape(-1)
    n = len(out)
    p1 = np.full(n, np.nan) if p_first is None else np.asarray(p_first, dtype=np.float64).reshape(-1)
    p2 = np.full(n, np.nan) if p_second is None else np.asarray(p_second, dtype=np.float64).reshape(-1)
    if p1.shape != (n,) or p2.shape != (n,):
        raise ValueError(f"p_first and p_second must have {n} values each like labels, got {p1.shape} and {p2.shape}")
    known = np.isfinite(out) & np.isfinite(p1) & np.isfinite(p2)
    out[known & (np.maximum(p1, p2) < min_confidence)] = np.nan
    if mode == "soft":
        # p_first + p_second > 0 wherever a label exists: the likelier of the two answers decided it.
        soft = known & np.isfinite(out) & (p1 + p2 > 0)
        out[soft] = p1[soft] / (p1[soft] + p2[soft])
    return out


def fit_bradley_terry(
    model: RewardModel,
    first: np.ndarray,
    second: np.ndarray,
    labels: np.ndarray,
    fit: FitConfig = FitConfig(),
    *,
    seed: int = 0,
) -> FitResult:
    """Learn a reward from pairwise preferences with the Bradley-Terry model.

    ``P(first preferred) = sigmoid(r(first) - r(second))`` with ``r`` in standardised units
    (``output_scale * net(x)``), trained by cross-entropy against the labels. ``target_mean``
    and ``target_std`` are left as they are (0 and 1 on a fresh model).

    Args:
        model: trained in place, from its current weights.
        first, second: the two items of each pair; cnn: uint8 frames ``[N, H, W, 3]``;
            mlp: float states ``[N, obs_dim]``.
        labels: float ``[N]``: 1.0 = first preferred, 0.0 = second preferred, values in
            between are soft labels (0.5 = equally good; the cross-entropy takes any target in
            [0, 1], e.g. from :func:`preference_fit_labels`), NaN = no label (pair dropped and
            counted as ``n_unlabelled``). Note RL-VLM-F's VLM answers the opposite way
            (``0`` = image 1 better); convert before calling.
        fit: epochs over the labelled training pairs, batch size (pairs per gradient step and
            member), learning rate and held-out share (labelled pairs kept out of training).
        seed: seeds the split and the members' shuffles.

    Returns:
        A :class:`FitResult`; with no labelled pair at all nothing is trained and ``n_train`` is 0.
    """
    start_time = time.perf_counter()
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 1 or not len(first) == len(second) == len(labels):
        raise ValueError(
            f"first, second and labels must have the same length N (labels [N]); got "
            f"{len(first)}, {len(second)} and labels of shape {labels.shape}"
        )
    labelled = ~np.isnan(labels)
    if np.any((labels[labelled] < 0) | (labels[labelled] > 1)):
        raise ValueError("labels must be in [0, 1] (1.0 = first preferred, 0.0 = second) or NaN")
    n_unlabelled = int((~labelled).sum())
    if not labelled.any():
        nan = math.nan
        return FitResult("bradley_terry", 0, 0, 0, 0, nan, nan, time.perf_counter() - start_time, n_unlabelled)

    keep = np.flatnonzero(labelled)
    first_p = model.prepare(first)[torch.as_tensor(keep)]
    second_p = model.prepare(second)[torch.as_tensor(keep)]
    labels = labels[keep]
    _init_state_normaliser(model, torch.cat([first_p, second_p]))
    y_all = torch.as_tensor(labels, dtype=torch.float32)

    rng = np.random.default_rng(seed)
    train_idx, heldout_idx = _split(len(labels), fit.heldout_fraction, rng)
    def member_loss(member: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        # One forward pass over both halves of the pairs.
        x = model.to_network_input(torch.cat([first_p[idx], second_p[idx]]))
        r1, r2 = (model.output_scale * member(x)).chunk(2)
        return F.binary_cross_entropy_with_logits(r1 - r2, y_all[idx].to(model.device))

    steps_per_epoch, last_epoch_loss = _train_members(model, train_idx, member_loss, fit, rng)

    def metrics_on(idx: np.ndarray) -> tuple[float, float]:
        rows = torch.as_tensor(idx)
        return _preference_metrics(model, first_p[rows], second_p[rows], labels[idx])

    _, train_accuracy = metrics_on(train_idx)
    heldout_loss = heldout_accuracy = math.nan
    if len(heldout_idx) > 0:
        heldout_loss, heldout_accuracy = metrics_on(heldout_idx)
    return _fit_result("bradley_terry", fit, steps_per_epoch, train_idx, heldout_idx, last_epoch_loss, heldout_loss,
                       start_time, n_unlabelled=n_unlabelled, heldout_accuracy=heldout_accuracy,
                       train_accuracy=train_accuracy)
