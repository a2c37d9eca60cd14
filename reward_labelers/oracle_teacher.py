"""The scripted teacher of B-Pref (Lee et al. 2021): preferences from the environment's true reward.

It is the reference point every preference labeler is compared with ("GT preference" in
RL-VLM-F), and it lets the whole preference pipeline run without a VLM. Its noise knobs model
the ways a real annotator (human or VLM) departs from a perfect one:

- ``beta``: Bradley-Terry rationality. ``None`` is perfectly rational (always the higher return);
  a finite ``beta > 0`` samples ``P(first preferred) = sigmoid(beta * (R1 - R2))``.
- ``gamma``: myopia. Over a segment of ``T`` steps, step ``t`` (0-based) weighs
  ``gamma ** (T - 1 - t)``: the last step counts fully, earlier ones less.
- ``eps_mistake``: each label is flipped with this probability.
- ``eps_skip``: pairs where both segments are bad are not answered (NaN label).
- ``eps_equal``: pairs whose returns are close are declared equally good (label 0.5).

Label convention, shared with every preference labeler: 1.0 = first preferred, 0.0 = second,
NaN = no label (skipped). Ties are the soft label **0.5**, as in B-Pref (whose loss uses a
uniform target for "equally preferable"): cross-entropy with target 0.5 pushes the two
predicted returns together, which is the information a tie carries. Learners that only take
hard labels must treat 0.5 as "drop" themselves. Exactly equal returns are always a tie, even
with ``eps_equal = 0`` (B-Pref silently prefers the first segment there; that is a bias).

Thresholds. B-Pref scales ``eps_equal`` and ``eps_skip`` by an outside "margin" (the average
true return, rescaled to the segment length). Pass that as ``return_scale`` to get its exact
rule: tie if ``|R1 - R2| < eps_equal * return_scale``, skip if ``max(R1, R2) < eps_skip *
return_scale``. Without it the thresholds are relative to the batch queried together, which also
works for negative rewards: tie if ``|R1 - R2| < eps_equal * (max - min of the batch's returns)``,
skip if ``max(R1, R2)`` is below the ``eps_skip`` quantile of the batch's returns. As in B-Pref,
skip and tie look at the undiscounted returns; the preference itself uses the discounted ones;
ties are never flipped by ``eps_mistake``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

TIE_LABEL = 0.5


@dataclass
class TeacherStats:
    """Running counts over every ``compare`` call: pairs ``asked``; of them ``answered``
    (a preference), ``ties`` (0.5) and ``skipped`` (NaN, both sides bad)."""

    asked: int = 0
    answered: int = 0
    ties: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class OracleTeacher:
    """Preferences between two frames (or segments) from their true rewards, with B-Pref noise.

    Deterministic given ``seed`` and the sequence of calls: every call draws the same number of
    random numbers per pair, whatever the knobs select. It keeps no label store (its labels
    cost nothing and follow from the rewards and the seed) and never skips identical frames:
    it only reads the rewards.

    Args:
        beta: Bradley-Terry rationality (> 0), or None for a perfectly rational teacher.
        gamma: myopic discount over a segment, in (0, 1]; 1 = plain sum.
        eps_mistake: probability of flipping a label, in [0, 1].
        eps_skip: how bad both segments must be to skip the pair (see the module docstring).
        eps_equal: how close the returns must be to call a tie (see the module docstring).
        return_scale: B-Pref's margin (typical segment return); None = batch-relative thresholds.
        seed: seed of the teacher's random generator.
    """

    # The teacher reads only the true rewards: callers may skip rendering.
    needs_frames = False

    def __init__(
        self,
        beta: float | None = None,
        gamma: float = 1.0,
        eps_mistake: float = 0.0,
        eps_skip: float = 0.0,
        eps_equal: float = 0.0,
        return_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        if beta is not None and not beta > 0:
            raise ValueError(f"beta must be > 0 (or None for a perfectly rational teacher), got {beta}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        for name, value in (("eps_mistake", eps_mistake), ("eps_skip", eps_skip), ("eps_equal", eps_equal)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if return_scale is not None and not return_scale > 0:
            raise ValueError(f"return_scale must be > 0 (or None for batch-relative thresholds), got {return_scale}")
        self.beta = None if beta is None else float(beta)
        self.gamma = float(gamma)
        self.eps_mistake = float(eps_mistake)
        self.eps_skip = float(eps_skip)
        self.eps_equal = float(eps_equal)
        self.return_scale = None if return_scale is None else float(return_scale)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.stats = TeacherStats()

    def __repr__(self) -> str:
        return (
            f"OracleTeacher(beta={self.beta}, gamma={self.gamma}, eps_mistake={self.eps_mistake}, "
            f"eps_skip={self.eps_skip}, eps_equal={self.eps_equal}, return_scale={self.return_scale}, "
            f"seed={self.seed})"
        )

    def compare(
        self,
        first: np.ndarray | None,
        second: np.ndarray | None,
        goal: str | None = None,
        true_rewards: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Label N pairs from their true rewards.

        Args:
            first: the first frames of each pair (uint8 ``[N, H, W, 3]``, or ``[N, T, H, W, 3]``
                segments), or None: only their count is checked.
            second: the second frames, same layout as ``first``, or None.
            goal: unused (the true reward already encodes the task); accepted for the common API.
            true_rewards: ``(r1, r2)``, float ``[N]`` per-frame rewards or ``[N, T]`` segment
                rewards of the first and second items of each pair.

        Returns:
            float32 ``[N]``: 1.0 first preferred, 0.0 second, 0.5 tie, NaN skipped.
        """
        del goal
        if true_rewards is None:
            raise ValueError(
                "OracleTeacher needs the true rewards of both sides: "
                "compare(first, second, goal, true_rewards=(r1, r2)) with r1, r2 float [N] or [N, T]"
            )
        if len(true_rewards) != 2:
            raise ValueError(f"true_rewards must be a pair (r1, r2), got {len(true_rewards)} items")
        r1, r2 = (np.asarray(r, dtype=np.float64) for r in true_rewards)
        if r1.shape != r2.shape or r1.ndim not in (1, 2):
            raise ValueError(f"r1 and r2 must both be [N] or [N, T] with equal shapes, got {r1.shape} and {r2.shape}")
        if not (np.isfinite(r1).all() and np.isfinite(r2).all()):
            raise ValueError("true_rewards contain NaN or infinite values")
        n = r1.shape[0]
        for name, frames in (("first", first), ("second", second)):
            if frames is not None and len(frames) != n:
                raise ValueError(f"{name} has {len(frames)} items but true_rewards has {n} pairs")
        if r1.ndim == 1:
            r1, r2 = r1[:, None], r2[:, None]

        # Draw every random number up front, one per pair per use, so a pair's outcome does not
        # depend on which other pairs are skipped or tied.
        bt_draws = self._rng.random(n)
        mistake_draws = self._rng.random(n)

        plain1, plain2 = r1.sum(axis=1), r2.sum(axis=1)
        weights = self.gamma ** np.arange(r1.shape[1] - 1, -1, -1, dtype=np.float64)
        discounted1, discounted2 = r1 @ weights, r2 @ weights

        if self.beta is None:
            labels = (discounted1 > discounted2).astype(np.float64)
        else:
            prob_first = _sigmoid(self.beta * (discounted1 - discounted2))
            labels = (bt_draws < prob_first).astype(np.float64)
        flipped = mistake_draws < self.eps_mistake
        labels[flipped] = 1.0 - labels[flipped]

        tie_threshold, skip_threshold = self._thresholds(np.concatenate([plain1, plain2]))
        labels[np.abs(plain1 - plain2) < tie_threshold] = TIE_LABEL
        labels[discounted1 == discounted2] = TIE_LABEL
        if skip_threshold is not None:
            labels[np.maximum(plain1, plain2) < skip_threshold] = np.nan
        self.stats.asked += n
        self.stats.ties += int((labels == TIE_LABEL).sum())
        self.stats.skipped += int(np.isnan(labels).sum())
        self.stats.answered += int((np.isfinite(labels) & (labels != TIE_LABEL)).sum())
        return labels.astype(np.float32)

    def _thresholds(self, returns: np.ndarray) -> tuple[float, float | None]:
        """(tie threshold on |R1 - R2|, skip threshold on max(R1, R2) or None) for this batch."""
        if self.return_scale is not None:
            skip = self.eps_skip * self.return_scale if self.eps_skip > 0 else None
            return self.eps_equal * self.return_scale, skip
        tie = self.eps_equal * float(returns.max() - returns.min())
        skip = float(np.quantile(returns, self.eps_skip)) if self.eps_skip > 0 else None
        return tie, skip


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    return np.exp(-np.logaddexp(0.0, -x))
