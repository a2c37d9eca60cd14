"""`vlmrl report`: real tiny runs (scripted teacher + pixel CNN, oracle + distillation, a VLM behind
the OpenAI-compatible test server, offline IQL), the report written from their directories, bad
inputs, and the page opened in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import train_cli_args
from vlmrl.cli import main
from vlmrl.report import read_run, write_report


# A few hundred steps of the main job (teacher preferences, CNN on 64x64 frames): enough for two
# query rounds, a checkpoint, an evaluation and a video; ~15 s on 2 cores.
TINY_PREFERENCE = [
    "agent.total_timesteps=1024", "run.checkpoint_every=512", "run.eval_episodes=1",
    "preference.first_round_at=256", "preference.round_every=256", "preference.pairs_per_round=32",
    "preference.budget=64", "preference.frame_buffer=512", "preference.segment_length=5",
    "preference.fit.epochs=1", "preference.net.ensemble_size=1",
    "agent.hyperparams.n_steps=128", "agent.hyperparams.batch_size=128", "agent.hyperparams.n_epochs=1",
]  # fmt: skip
TINY_ORACLE = [
    "agent.total_timesteps=512", "run.checkpoint_every=256", "run.eval_episodes=1", "env.n_envs=2",
    "env.render_width=64", "env.render_height=64", "reward.distill=true", "reward.label_every=2",
    "reward.warmup_labels=64", "reward.retrain_every=256", "agent.hyperparams.n_epochs=1",
    "agent.hyperparams.batch_size=64",
]  # fmt: skip


def train(tmp_root: Path, config: str, overrides: list[str], seed: int = 0) -> Path:
    """One real `vlmrl train` in this process; returns its run directory."""
    root = tmp_root / f"{Path(config).stem}-{seed}"
    assert main(train_cli_args(config, [f"run.root={root}", f"run.seed={seed}", *overrides])) == 0
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "teacher": train(root, "configs/cartpole_pixels_pref.yaml", TINY_PREFERENCE, seed=0),
        "teacher_seed1": train(root, "configs/cartpole_pixels_pref.yaml", TINY_PREFERENCE, seed=1),
        "oracle": train(root, "configs/cartpole_oracle.yaml", TINY_ORACLE),
    }


def page_of(run_dir: Path) -> str:
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text()


def test_preference_run_report_has_every_section(runs):
    page = page_of(runs["teacher"])
    for heading in ("Learning curves", "Does the learnt reward track the task", "Preference labels", "Video",
                    "Timing", "Resolved config"):
        assert f">{heading}</h2>" in page, heading
    assert "could not be drawn" not in page and "Missing from this run" not in page
    assert "Pearson" in page and "Spearman" in page
    assert "Asked pairs" in page and "true segment returns" in page  # pairs from the checkpoint
    assert "data:video/mp4;base64," in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    assert "segment_length: 5" in page  # the resolved config


def test_oracle_run_report_shows_distilled_net_and_labeller_counts(runs):
    page = page_of(runs["oracle"])
    assert "Preference labels" not in page and "could not be drawn" not in page
    assert "labeller calls (batched calls)" in page and "frames labelled" in page
    assert "Pearson" in page  # the distilled net against the true reward


def test_cli_reports_several_seeds_with_mean_and_spread(runs, capsys):
    assert main(["report", str(runs["teacher"]), str(runs["teacher_seed1"])]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(runs["teacher"] / "report.html"), str(runs["teacher_seed1"] / "report.html")]
    page = (runs["teacher_seed1"] / "report.html").read_text()
    assert "All 2 runs of this task and labeller" in page
    assert runs["teacher"].name in page


def test_vlm_preference_run_report_shows_the_label_store_and_the_analysis_text(tmp_path):
    """A run whose pairs a VLM answered (the OpenAI-compatible test server, two-stage prompts)."""
    from openai_test_server import OpenAITestServer

    settings = ["labeler.model=test-vlm", "labeler.max_retries=0", "labeler.two_stage=true", "env.n_envs=2",
                "env.render_width=64", "env.render_height=64", "preference.first_round_at=64",
                "preference.round_every=128", "preference.pairs_per_round=8", "preference.budget=16",
                "preference.fit.epochs=1", "preference.net.ensemble_size=1", "agent.total_timesteps=256",
                "agent.hyperparams.n_steps=64", "agent.hyperparams.batch_size=64", "agent.hyperparams.n_epochs=1",
                "run.eval_episodes=1", "run.video_episodes=0", "run.torch_threads=1"]  # fmt: skip
    with OpenAITestServer(model="test-vlm") as server:
        run_dir = train(tmp_path, "configs/cartpole_vlm_pref.yaml", [f"labeler.base_url={server.base_url}", *settings])
    page = page_of(run_dir)
    assert "Label store labels.sqlite" in page and "rows with status &#x27;answered&#x27;" in page
    assert "Asked pairs (first 8)" in page
    assert "<summary>analysis</summary>" in page and "mean brightness" in page  # the VLM's own words
    assert "could not be drawn" not in page


def test_report_on_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a vlmrl run directory" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_report_on_a_run_without_video_says_so(runs, tmp_path):
    run_dir = shutil.copytree(runs["teacher"], tmp_path / "no_video")
    shutil.rmtree(run_dir / "videos")
    page = page_of(run_dir)
    assert "No video: this run recorded none" in page and "a video (videos/*.mp4)" in page
    assert "could not be drawn" not in page


def test_report_on_a_run_killed_before_its_first_checkpoint(runs, tmp_path):
    # What a run directory holds when training is killed early: the config and TensorBoard logs.
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    shutil.copy(runs["teacher"] / "config.yaml", run_dir / "config.yaml")
    page = page_of(run_dir)
    assert "the run stopped before its first checkpoint" in page
    assert "summary.json: the run stopped before training finished" in page
    assert "No learning curves" in page and "No video" in page
    assert "Traceback" not in page and "could not be drawn" not in page
    # With its logs (but still no checkpoint): curves, and rollouts of a random policy only.
    shutil.copytree(runs["teacher"] / "tb", run_dir / "tb")
    page = page_of(run_dir)
    assert "No learning curves" not in page and "only random-policy episodes" in page


def test_offline_run_report_charts_the_results_table(tmp_path, monkeypatch):
    """A real (tiny) offline run: collect Pendulum episodes, train IQL, BC and IQL-GT for two seeds."""
    from vlmrl.offline_train import run_offline_training

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert main(["collect", "pendulum", "--episodes", "2", "--max-steps", "30", "--out", "pendulum/random-v0",
                 "--render-size", "8"]) == 0
    config = tmp_path / "offline.yaml"
    config.write_text(
        "task: pendulum\ndataset: {id: pendulum/random-v0}\n"
        "agent: {algo: iql, n_steps: 20, n_steps_per_epoch: 10, batch_size: 64, device: cpu:0}\n"
        f"eval: {{episodes: 1, env_id: Pendulum-v1}}\nrun: {{seeds: [0, 1], root: {tmp_path / 'runs'}, name: test}}\n"
    )
    run_dir = run_offline_training(str(config), [], baselines=["bc", "iql-gt"], show_progress=False)
    assert read_run(run_dir).kind == "offline"
    page = page_of(run_dir)
    assert "Offline results" in page and "Training losses" in page and "could not be drawn" not in page
    for method in ("iql", "bc", "iql-gt"):
        assert f"<th scope='row'>{method}</th>" in page
    assert page.count("<img") == 2  # the results chart and the loss curves


# -- in a real browser -----------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's WebSocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(url, max_size=None, open_timeout=30)
        self.events: list[dict] = []
        self._next_id = 0

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == self._next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium (Debian's `chromium`, installed by install.sh) and its DevTools page."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.skip("no chromium on PATH (install.sh installs Debian's `chromium` where apt is available)")
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,900",
         "--autoplay-policy=no-user-gesture-required", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield devtools
        devtools.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


CHECK_PAGE = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  const video = document.querySelector('video');
  let state = null;
  if (video) {
    if (video.readyState < 2) {
      await new Promise(r => { video.addEventListener('canplay', r, {once: true});
                               video.addEventListener('error', r, {once: true}); setTimeout(r, 20000); });
    }
    let played = false, reason = null;
    try { await video.play(); played = true; } catch (e) { reason = String(e); }
    state = {readyState: video.readyState, played, reason, duration: video.duration,
             error: video.error ? video.error.code : null};
  }
  return {images: images.length, broken: images.filter(i => !(i.naturalWidth > 0)).map(i => i.alt), video: state,
          width: document.documentElement.scrollWidth, viewport: window.innerWidth};
})()"""


def test_report_opens_in_chromium_without_errors_and_plays_the_video(runs, chromium):
    from PIL import Image

    path = write_report(runs["teacher"])
    chromium.call("Runtime.enable")
    chromium.call("Log.enable")
    chromium.call("Page.enable")
    chromium.call("Page.navigate", url=path.resolve().as_uri())
    chromium.wait_for("Page.loadEventFired")
    result = chromium.call("Runtime.evaluate", expression=CHECK_PAGE, awaitPromise=True, returnByValue=True)
    state = result["result"]["value"]
    screenshot = chromium.call("Page.captureScreenshot", format="png")

    errors = [e for e in chromium.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    assert state["images"] >= 5 and state["broken"] == []
    assert state["video"]["error"] is None and state["video"]["readyState"] >= 2 and state["video"]["played"], state
    assert state["video"]["duration"] > 0
    assert state["width"] <= state["viewport"]  # no horizontal scrolling at laptop width (1280 px)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(screenshot["data"]))).convert("L"), dtype=float)
    assert pixels.std() > 20, "blank screenshot"
