"""Throughput of preference labelling against a chat-completions endpoint (``vlmrl bench labels``).

For each concurrency level, labels ``n_pairs`` fresh random frame pairs into a fresh label store
and times it, then labels the same pairs again with the same store to show that stored pairs cost
no request. Point it at a real server (vLLM, Ollama) or at ``tests/openai_test_server.py
--latency-ms 200`` to measure the client alone.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_GOAL = "to show the brighter image"


def bench_pairs(n_pairs: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 ``[n_pairs, height, width, 3]`` frame pairs with different mean brightness."""
    rng = np.random.default_rng(seed)
    shape = (n_pairs, height, width, 3)
    first = rng.integers(0, 200, size=(n_pairs, 1, 1, 1)) + rng.integers(0, 56, size=shape)
    second = rng.integers(0, 200, size=(n_pairs, 1, 1, 1)) + rng.integers(0, 56, size=shape)
    return first.astype(np.uint8), second.astype(np.uint8)


def run_label_bench(
    endpoint: str,
    model: str,
    concurrency_levels: Sequence[int] = (1, 4, 16),
    n_pairs: int = 32,
    frame_size: tuple[int, int] = (64, 64),
    two_stage: bool = True,
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 60.0,
    store_dir: str | Path | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time preference labelling at each concurrency level.

    Args:
        endpoint: chat-completions base URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: model name sent with each request.
        concurrency_levels: ``max_concurrency`` values to measure, in order.
        n_pairs: pairs labelled per level (fresh pairs and a fresh store for each level).
        frame_size: ``(height, width)`` of the random frames, in pixels.
        two_stage: RL-VLM-F's two turns per pair (True) or one (False).
        api_key_env: environment variable with the API key (unset: no Authorization header).
        timeout_s: per-request timeout, in seconds.
        store_dir: where the label stores go (kept afterwards); None uses a temporary folder.
        seed: seed of the random frames.

    Returns:
        One dict per level: ``concurrency``, ``pairs``, ``seconds``, ``pairs_per_s``,
        ``requests``, ``answered``, ``unsure``, ``unparseable``, ``failed``, and for the second
        pass over the same pairs ``rerun_seconds`` and ``rerun_requests`` (0 when the store works).
    """
    from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler

    if n_pairs < 1 or not concurrency_levels or min(concurrency_levels) < 1:
        raise ValueError("n_pairs and every concurrency level must be >= 1")
    height, width = frame_size
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vlmrl-bench-labels-") as tmp:
        root = Path(store_dir) if store_dir is not None else Path(tmp)
        for level_index, concurrency in enumerate(concurrency_levels):
            first, second = bench_pairs(n_pairs, height, width, seed=seed + level_index)
            store_path = root / f"labels-c{concurrency}-{level_index}.sqlite"
            store_path.unlink(missing_ok=True)

            def labeler() -> OpenAIPreferenceLabeler:
                return OpenAIPreferenceLabeler(
                    endpoint,
                    model,
                    api_key_env=api_key_env,
                    store=store_path,
                    two_stage=two_stage,
                    max_concurrency=concurrency,
                    timeout_s=timeout_s,
                )

            fresh = labeler()
            start = time.perf_counter()
            fresh.compare(first, second, BENCH_GOAL)
            seconds = time.perf_counter() - start
            fresh.store.close()

            again = labeler()
            start = time.perf_counter()
            again.compare(first, second, BENCH_GOAL)
            rerun_seconds = time.perf_counter() - start
            again.store.close()

            stats = fresh.stats
            results.append(
                {
                    "concurrency": concurrency,
                    "pairs": n_pairs,
                    "seconds": seconds,
                    "pairs_per_s": n_pairs / seconds,
                    "requests": stats.requests,
                    "answered": stats.answered,
                    "unsure": stats.unsure,
                    "unparseable": stats.unparseable,
                    "failed": stats.failed,
                    "rerun_seconds": rerun_seconds,
                    "rerun_requests": again.stats.requests,
                }
            )
    return results


def format_label_bench(rows: list[dict[str, Any]]) -> str:
    """The bench results as a plain-text table, with throughput relative to the first level."""
    lines = [
        f"{'concurrency':>11} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'speedup':>7} "
        f"{'requests':>8} {'failed':>6} {'rerun req':>9}"
    ]
    base = rows[0]["pairs_per_s"] if rows else 1.0
    for row in rows:
        lines.append(
            f"{row['concurrency']:>11} {row['pairs']:>6} {row['seconds']:>8.2f} {row['pairs_per_s']:>8.2f} "
            f"{row['pairs_per_s'] / base:>6.1f}x {row['requests']:>8} {row['failed']:>6} {row['rerun_requests']:>9}"
        )
    return "\n".join(lines)


__all__ = ["bench_pairs", "format_label_bench", "run_label_bench"]
