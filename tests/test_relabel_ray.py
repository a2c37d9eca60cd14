"""`vlmrl relabel --engine ray` on a real local Ray cluster (ray.init(num_cpus=2)): the same dataset
as the local engine, a killed actor is restarted with nothing lost or counted twice, and VLM
answers reach the label store through one writer."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'vlmrl[ray]'")

from helpers import openai_preference_yaml, relabel_preference_yaml  # noqa: E402
from openai_test_server import OpenAITestServer  # noqa: E402

from vlmrl.cli import main  # noqa: E402
from vlmrl.config import load_relabel_config  # noqa: E402
from vlmrl.relabel import RelabelTimings, relabel  # noqa: E402
from vlmrl.relabel_ray import RayOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two actors on the two CPUs, leaving a quarter CPU for the read tasks.
TWO_WORKERS = RayOptions(workers=2)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def root(tmp_path, monkeypatch):
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def collect(dataset_id: str, episodes: int, steps: int, size: int = 48) -> None:
    assert main(["collect", "pendulum", "--episodes", str(episodes), "--max-steps", str(steps),
                 "--out", dataset_id, "--render-size", str(size)]) == 0


def dataset_bytes(root: Path, dataset_id: str) -> dict[str, bytes]:
    """Every file of a dataset; the metadata with the dataset's own id blanked out."""
    folder = root / dataset_id
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    files["data/metadata.json"] = files["data/metadata.json"].replace(dataset_id.encode(), b"<id>")
    return files


def relabel_both_ways(root: Path, config_path: Path, name: str, options: RayOptions = TWO_WORKERS,
                      **kwargs) -> RelabelTimings:
    config = load_relabel_config(config_path)
    relabel("pendulum/random-v0", config, f"pendulum/{name}-local-v0", show_progress=False)
    timings = RelabelTimings()
    relabel("pendulum/random-v0", config, f"pendulum/{name}-ray-v0", show_progress=False, engine="ray",
            ray_options=options, timings=timings, **kwargs)
    assert dataset_bytes(root, f"pendulum/{name}-ray-v0") == dataset_bytes(root, f"pendulum/{name}-local-v0")
    return timings


def test_every_frame_labeler_gives_the_local_engines_dataset(root, tmp_path):
    from tiny_clip import save_tiny_open_clip

    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    collect("pendulum/random-v0", episodes=3, steps=20)  # 63 frames: chunks of 8, the last one short
    model = tmp_path / "model"
    RewardModel(RewardNetConfig(kind="cnn", input_size=48), ensemble_size=2, device="cpu", seed=3).save(model)
    clip_config, clip_weights = save_tiny_open_clip(tmp_path / "clip")
    configs = {
        # Oracle noise is seeded per chunk: equal output needs equal chunk boundaries on the workers.
        "oracle": "chunk_size: 8\nlabeler: {kind: oracle, scale: 2.0, noise_std: 0.5}\n",
        "net": f"chunk_size: 8\nlabeler: {{kind: reward_model, device: cpu, path: {model}}}\n",
        "clip": (f"chunk_size: 8\nlabeler: {{kind: clip, device: cpu, model: {clip_config}, pretrained: {clip_weights}, "
                 "goal_prompts: [pendulum upright], baseline_prompts: [pendulum]}\n"),
    }
    for name, text in configs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        timings = relabel_both_ways(root, path, name)
        assert timings.chunks == 8 and timings.duplicates == 0
        rewards = np.concatenate([e.rewards for e in _episodes(f"pendulum/{name}-ray-v0")])
        assert rewards.shape == (60,) and np.all(np.isfinite(rewards)) and np.ptp(rewards) > 0


def _episodes(dataset_id: str):
    from vlmrl.datasets import open_dataset

    return list(open_dataset(dataset_id).episodes())


def _processes(title: str) -> set[int]:
    """PIDs whose command line contains ``title`` (Ray names an actor's process after its class)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if title in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


class ActorKiller(threading.Thread):
    """SIGKILLs one labeler actor once ``ready()`` is true, then watches for its replacement."""

    def __init__(self, title: str, ready) -> None:
        super().__init__(daemon=True)
        self.title, self.ready = title, ready
        self.killed: int | None = None
        self.ready_when_killed = None
        self.replacement: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            actors = _processes(self.title)
            state = self.ready()
            if actors and state:
                self.killed = min(actors)
                self.ready_when_killed = state
                os.kill(self.killed, signal.SIGKILL)
            time.sleep(0.005)
        while not self.stop.is_set() and self.replacement is None:
            self.replacement = next(iter(_processes(self.title) - {self.killed}), None)
            time.sleep(0.01)


def test_killed_actor_is_restarted_and_nothing_is_lost_or_counted_twice(root, tmp_path):
    from vlmrl.bench_relabel import write_random_dataset
    from vlmrl.datasets import datasets_root
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    write_random_dataset("pendulum/random-v0", frames=1200, size=96, episode_length=199)
    model = tmp_path / "model"
    RewardModel(RewardNetConfig(kind="cnn", input_size=96), ensemble_size=3, device="cpu").save(model)
    path = tmp_path / "net.yaml"
    path.write_text(f"chunk_size: 16\nlabeler: {{kind: reward_model, device: cpu, path: {model}}}\n")
    n_chunks = -(-1200 // 16)
    chunks_dir = datasets_root() / ".relabel-pendulum__net-ray-v0" / "chunks"

    def some_chunks_saved():  # mid-run: the writer has saved a chunk, and most are still to come
        saved = len(list(chunks_dir.glob("chunk_*.npy"))) if chunks_dir.is_dir() else 0
        return saved if 0 < saved < n_chunks // 2 else None

    killer = ActorKiller("_ChunkLabeler", some_chunks_saved)
    killer.start()
    try:
        timings = relabel_both_ways(root, path, "net", options=RayOptions(workers=1))
    finally:
        killer.stop.set()
        killer.join(5)
    assert killer.killed is not None, "no actor was killed: the test did not exercise a failure"
    assert killer.replacement is not None, "Ray did not start a replacement actor"
    assert 0 < killer.ready_when_killed < n_chunks
    # Every chunk saved exactly once (a retried chunk's repeat would be dropped, not re-counted).
    assert timings.chunks == n_chunks


def test_vlm_preferences_on_ray_match_local_with_one_store_writer(root, tmp_path):
    from vlmrl.label_store import LabelStore

    collect("pendulum/random-v0", episodes=3, steps=15)
    local_store, ray_store = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    with OpenAITestServer(latency_ms=100) as server:
        local_config = tmp_path / "local.yaml"
        local_config.write_text(openai_preference_yaml(local_store, server.base_url, max_concurrency=2, pairs_per_round=8))
        relabel("pendulum/random-v0", load_relabel_config(local_config), "pendulum/pref-local-v0", show_progress=False)
        asked_locally = server.count("vision")

        ray_config = tmp_path / "ray.yaml"
        ray_config.write_text(openai_preference_yaml(ray_store, server.base_url, max_concurrency=2, pairs_per_round=8))
        store_rows = lambda: sum(LabelStore(ray_store).counts().values()) if ray_store.exists() else 0  # noqa: E731
        killer = ActorKiller("_PairAsker", lambda: store_rows() or None)  # after the first committed answer
        killer.start()
        try:
            relabel("pendulum/random-v0", load_relabel_config(ray_config), "pendulum/pref-ray-v0",
                    show_progress=False, engine="ray", ray_options=TWO_WORKERS)
        finally:
            killer.stop.set()
            killer.join(5)
        assert killer.killed is not None and killer.replacement is not None
        asked_on_ray = server.count("vision") - asked_locally
        # The pairs the killed actor had in flight are asked again; nothing else is.
        assert asked_locally <= asked_on_ray <= asked_locally + 2  # max_concurrency: 2 pairs per batch

        # Everything is in the store now: another relabel asks nothing.
        relabel("pendulum/random-v0", load_relabel_config(ray_config), "pendulum/pref-ray2-v0",
                show_progress=False, engine="ray", ray_options=TWO_WORKERS)
        assert server.count("vision") == asked_locally + asked_on_ray
        assert not server.protocol_errors

    with LabelStore(local_store) as local, LabelStore(ray_store) as remote:
        local_rows = {row.key: (row.status, row.label, row.answer) for row in local.iter_rows()}
        ray_rows = {row.key: (row.status, row.label, row.answer) for row in remote.iter_rows()}
        assert ray_rows == local_rows and len(ray_rows) == asked_locally
        assert remote.integrity_check() == "ok"
    for name in ("pref-ray-v0", "pref-ray2-v0"):
        for ours, theirs in zip(_episodes(f"pendulum/{name}"), _episodes("pendulum/pref-local-v0")):
            np.testing.assert_array_equal(ours.rewards, theirs.rewards)


def test_too_few_cpus_for_the_workers_is_a_clear_cli_error(root, tmp_path, capsys):
    collect("pendulum/random-v0", episodes=1, steps=5)
    path = tmp_path / "oracle.yaml"
    path.write_text("labeler: {kind: oracle}\n")
    code = main(["relabel", "pendulum/random-v0", "--labeler", str(path), "--out", "pendulum/o-v0",
                 "--engine", "ray", "--workers", "2", "--cpus-per-worker", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert "--workers 2" in error and "--cpus-per-worker" in error and "2 CPUs" in error
    assert not (root / "pendulum/o-v0").exists()


def test_bench_relabel_reports_one_row_per_worker_count(capsys):
    assert main(["bench", "relabel", "--frames", "300", "--size", "48", "--engine", "ray", "--workers", "1,2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[1].split()
    rows = [dict(zip(header, line.split())) for line in lines[2:]]
    assert [(row["engine"], row["workers"]) for row in rows] == [("ray", "1"), ("ray", "2")]
    for row in rows:
        assert row["frames"] == "300" and float(row["frames_per_s"]) > 0 and float(row["label_s"]) > 0


def test_unreachable_address_fails_fast_with_a_clear_error(root, tmp_path):
    import subprocess
    import sys

    collect("pendulum/random-v0", episodes=1, steps=5)
    path = tmp_path / "oracle.yaml"
    path.write_text("labeler: {kind: oracle}\n")
    result = subprocess.run(  # Ray alone would retry an address nobody answers for minutes: timeout fails it
        [sys.executable, "-m", "vlmrl.cli", "relabel", "pendulum/random-v0", "--labeler", str(path), "--out",
         "pendulum/o-v0", "--engine", "ray", "--address", "127.0.0.1:1"],
        env={**os.environ, "MINARI_DATASETS_PATH": str(root)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--address '127.0.0.1:1'" in result.stderr and "ray start --head" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "pendulum/o-v0").exists()


def test_local_transformers_vlm_in_every_actor_labels_like_the_local_engine(root, tmp_path):
    import json

    from tiny_vlm import build_tiny_qwen2_vl

    from vlmrl.label_store import LabelStore

    # A tiny Qwen2-VL scripted to answer "0" (image 1 is better): real weights cannot run here.
    model = build_tiny_qwen2_vl(tmp_path / "vlm", scripted_reply="0")
    collect("pendulum/random-v0", episodes=2, steps=10)
    stores = {}
    for engine in ("local", "ray"):
        stores[engine] = tmp_path / f"{engine}.sqlite"
        path = tmp_path / f"{engine}.yaml"
        path.write_text(relabel_preference_yaml(
            f'{{kind: hf, device: cpu, model: "{model}", two_stage: false, batch_size: 3, max_new_tokens: 4}}',
            stores[engine], goal="the pendulum is upright", budget=12, pairs_per_round=6,
            net="{kind: mlp, hidden_size: 16, ensemble_size: 2}"))
        relabel("pendulum/random-v0", load_relabel_config(path), f"pendulum/hf-{engine}-v0", show_progress=False,
                engine=engine, ray_options=TWO_WORKERS if engine == "ray" else None)
    rows = {}
    for engine, store in stores.items():
        with LabelStore(store) as labels:
            rows[engine] = {row.key: (row.status, row.label, row.answer) for row in labels.iter_rows()}
    # Same store keys (the driver's keys match the actors' VLM config), each answered once.
    assert rows["ray"] == rows["local"] and len(rows["ray"]) == 12
    assert {value for value in rows["ray"].values()} == {("answered", 1.0, "0")}
    metadata = {}
    for engine, store in stores.items():
        text = (root / f"pendulum/hf-{engine}-v0/data/metadata.json").read_text()
        text = text.replace(str(store.resolve()), "<store>").replace(str(store), "<store>").replace(f"hf-{engine}-v0", "<id>")
        metadata[engine] = json.loads(text)
        assert metadata[engine]["vlmrl"]["counts"]["pairs_labelled"] == 12
    assert metadata["ray"] == metadata["local"]  # the labeler config included: the same on both engines
    assert "teacher" not in metadata["ray"]["vlmrl"]
    assert metadata["ray"]["vlmrl"]["labeler"]["labeler"]["kind"] == "hf"
    for ours, theirs in zip(_episodes("pendulum/hf-ray-v0"), _episodes("pendulum/hf-local-v0")):
        np.testing.assert_array_equal(ours.rewards, theirs.rewards)
