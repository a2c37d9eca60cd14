"""``vlmrl report``: one self-contained HTML page per run (``RUN_DIR/report.html``).

Everything a person wants after a run, on one page that opens from disk in any browser with no
network: plots are inline PNGs, the video is an inline MP4, the config is printed. Read top to
bottom: read what the run directory holds (:func:`read_run`) -> roll the saved policy out with
the saved reward net (:func:`score_rollouts`) -> one HTML section per question (each says what
is missing instead of failing) -> ``report.html``.

Training calls :func:`write_report` at its end; ``vlmrl report RUN_DIR [RUN_DIR ...]`` writes the
same page for existing runs, and for runs of the same task and labeler (seeds) adds their
learning curves as mean and spread.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlmrl.errors import UserError

REPORT_FILE = "report.html"

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

# Videos above this size are linked instead of embedded (a page of hundreds of MB opens slowly).
MAX_EMBEDDED_VIDEO_MB = 40

# Reward-tracking rollouts: episodes of the saved policy, then of a random policy (so that the
# true reward varies even when the policy has solved the task), each at most MAX_STEPS long.
POLICY_EPISODES = 1
RANDOM_EPISODES = 2
MAX_STEPS = 1500  # all episodes together; the last one is cut short (truncated) to fit
# A frame-reading labeler (CLIP) scores at most this many rollout frames (it is slow on a CPU).
MAX_LABELER_FRAMES = 128
PAIRS_IN_GRID = 8

DESCRIPTION = """\
Write RUN_DIR/report.html for each run directory: one self-contained page (images and the video
inline, no network needed to view it) with learning curves, whether the learnt reward tracks the
true reward on rollouts of the saved policy, preference-label counts and example pairs, CLIP
prompts, offline results, the run's timing and its resolved config. Runs of the same task and
labeler given together (seeds) also get their curves as mean and spread.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html: curves, reward checks, labels, video, config, timing",
        description=DESCRIPTION,
        epilog="example: vlmrl report runs/cartpole__teacher__0__20261127-101500 runs/cartpole__teacher__1__20261127-103000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `vlmrl train`")
    parser.add_argument("--no-rollouts", action="store_true", help="skip the reward-tracking rollouts (faster)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs = [read_run(Path(path)) for path in args.run_dirs]  # every argument checked before any work
    groups = group_runs(runs)
    for data in runs:
        print(_write(data, groups.get(data.group_key, []), rollouts=not args.no_rollouts))
    return 0


# -- reading a run directory ---------------------------------------------------------------------


Series = tuple[np.ndarray, np.ndarray]  # (env steps, values)


@dataclass
class RunData:
    """What a run directory holds; every field may be missing (None or empty)."""

    path: Path
    kind: str  # "online" or "offline"
    config_text: str = ""
    config: Any = None  # ExperimentConfig (online) or the offline config dict
    config_error: str | None = None
    summary: dict[str, Any] | None = None
    scalars: dict[str, Series] = field(default_factory=dict)
    videos: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what a reader should know is absent

    @property
    def group_key(self) -> tuple[str, str]:
        """Runs with the same key are seeds of one experiment: (task, labeler name)."""
        if self.kind == "online" and self.config is not None:
            return (self.config.task, self.config.labeler.name)
        return (self.kind, self.path.name)

    def last_step(self) -> int | None:
        """The highest env step any scalar was logged at."""
        steps = [int(s[0][-1]) for s in self.scalars.values() if len(s[0])]
        return max(steps) if steps else None

    def last(self, tag: str) -> float | None:
        series = self.scalars.get(tag)
        return float(series[1][-1]) if series is not None and len(series[1]) else None


def read_run(run_dir: Path) -> RunData:
    """Read ``run_dir``; :class:`UserError` when it is not a vlmrl run directory at all."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory")
    if (run_dir / "config.yaml").is_file():
        return _read_online(run_dir)
    if (run_dir / "config.json").is_file() or (run_dir / "results.csv").is_file():
        return _read_offline(run_dir)
    raise UserError(
        f"{run_dir} is not a vlmrl run directory: it has no config.yaml (written when `vlmrl train` starts "
        "an online run) and no config.json or results.csv (offline runs)"
    )


def _read_online(run_dir: Path) -> RunData:
    from vlmrl.runs import list_checkpoints, load_run_config

    data = RunData(run_dir, "online", config_text=(run_dir / "config.yaml").read_text())
    try:
        data.config = load_run_config(run_dir)
    except UserError as error:
        data.config_error = str(error)
        data.missing.append(f"the config could not be loaded ({error}); rollouts are skipped")
    data.summary = _read_json(run_dir / "summary.json")
    if data.summary is None:
        data.missing.append("summary.json: the run stopped before training finished (or is still running)")
    data.scalars = read_scalars(run_dir / "tb")
    if not data.scalars:
        data.missing.append("TensorBoard logs (tb/): no learning curves were logged yet")
    data.videos = sorted((run_dir / "videos").glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    if not data.videos:
        data.missing.append("a video (videos/*.mp4): none was recorded")
    data.checkpoints = list_checkpoints(run_dir)
    if not data.checkpoints and not (run_dir / "model.zip").is_file():
        data.missing.append("a saved policy (model.zip or a checkpoint): the run stopped before its first checkpoint")
    return data


def _read_offline(run_dir: Path) -> RunData:
    data = RunData(run_dir, "offline")
    config_file = run_dir / "config.json"
    if config_file.is_file():
        data.config_text = config_file.read_text()
        data.config = _read_json(config_file)
    else:
        data.missing.append("config.json")
    if not (run_dir / "results.csv").is_file():
        data.missing.append("results.csv: training has not finished for every method and seed")
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_scalars(tb_dir: Path) -> dict[str, Series]:
    """Every scalar under ``tb_dir`` (all event files, resumed runs included), sorted by step.

    A step logged twice (a resume repeats the steps after the last checkpoint) keeps the later value.
    """
    files = sorted(tb_dir.rglob("events.out.tfevents.*")) if tb_dir.is_dir() else []
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    points: dict[str, dict[int, float]] = {}
    for directory in sorted({f.parent for f in files}):
        accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                points.setdefault(tag, {})[int(event.step)] = float(event.value)
    return {tag: (np.array(sorted(p)), np.array([p[s] for s in sorted(p)])) for tag, p in points.items()}


def group_runs(runs: list[RunData]) -> dict[tuple[str, str], list[RunData]]:
    """Runs sharing task and labeler, for groups of two or more."""
    groups: dict[tuple[str, str], list[RunData]] = {}
    for data in runs:
        groups.setdefault(data.group_key, []).append(data)
    return {key: members for key, members in groups.items() if len(members) > 1}


# -- rollouts with the saved policy and reward net -----------------------------------------------


SOURCE_NAMES = {"policy": "saved policy", "random": "random policy"}


@dataclass
class ScoredEpisode:
    """One rollout: frames uint8 ``[T, H, W, 3]``, per-step true and learnt rewards ``[T]``."""

    source: str  # "policy" or "random"
    frames: np.ndarray
    true_rewards: np.ndarray
    learnt: np.ndarray | None
    terminated: bool
    labeller: np.ndarray | None = None  # a frame labeler's reward (NaN where not scored)

    def return_to_go(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """True return of the ``horizon`` steps from each step, and whether it is known.

        After a termination rewards count as zero (the end state is absorbing); a window that
        runs past a truncation is unknown, as for the scripted teacher's segments.
        """
        steps = len(self.true_rewards)
        padded = np.concatenate([self.true_rewards.astype(np.float64), np.zeros(horizon)])
        totals = np.convolve(padded, np.ones(horizon), mode="full")[horizon - 1 : horizon - 1 + steps]
        known = (np.arange(steps) + horizon <= steps) | self.terminated
        return totals, known


def find_reward_net(run_dir: Path, checkpoints: list[Path]) -> Path | None:
    """The final ``reward_net.json``, else the newest checkpoint's reward net."""
    if (run_dir / "reward_net.json").is_file():
        return run_dir / "reward_net.json"
    for checkpoint in reversed(checkpoints):
        found = sorted(checkpoint.glob("*reward_net.json"))
        if found:
            return found[0]
    return None


def score_rollouts(data: RunData, labeller_scoring: bool = True) -> tuple[list[ScoredEpisode], list[str]]:
    """Roll out the saved policy (and a random one) and score every step with the saved reward net.

    Returns:
        (episodes, notes): notes say what could not be done and why.
    """
    from vlmrl.agents.sb3_agents import load_agent
    from vlmrl.factory import make_env, make_labeler
    from vlmrl.reward_nets import RewardModel
    from vlmrl.runs import policy_path

    config, notes = data.config, []
    net_file = find_reward_net(data.path, data.checkpoints)
    model = RewardModel.load(net_file, device="cpu") if net_file is not None else None
    if model is None:
        notes.append("no reward net was saved (a per-frame labeler without distillation, or a run stopped before its first fit)")
    try:
        agent = load_agent(config.agent.algo, policy_path(data.path), None, device="cpu")
    except UserError as error:
        agent = None
        notes.append(f"{error}: only random-policy episodes")
    labeler = None
    if labeller_scoring and config.labeler.family == "frame":
        try:
            candidate = make_labeler(config.labeler, "frame", seed=config.run.seed)
            labeler = candidate if candidate.needs_frames else None
        except UserError as error:
            notes.append(f"the labeler could not be loaded, so its reward is not shown: {error}")

    env = make_env(config.env)
    episodes = []
    try:
        sources = [("policy", POLICY_EPISODES)] if agent is not None else []
        for source, count in [*sources, ("random", RANDOM_EPISODES)]:
            for index in range(count):
                budget = MAX_STEPS - sum(len(e.frames) for e in episodes)
                if budget <= 0:
                    break
                seed = config.run.seed + 30_000 + index
                policy = (lambda obs: agent.predict(obs, deterministic=True)[0]) if source == "policy" else None
                episodes.append(_scored_episode(env, policy, source, seed, model, budget))
    finally:
        env.close()
    if labeler is not None:
        _score_with_labeler(episodes, labeler)
    return episodes, notes


def _scored_episode(env: Any, policy: Callable | None, source: str, seed: int, model: Any, max_steps: int) -> ScoredEpisode:
    """One episode of ``policy`` (None: random actions), at most ``max_steps`` long, scored by ``model``."""
    observation, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    frames, observations, rewards, terminated = [], [], [], False
    for _ in range(max_steps):
        action = policy(observation) if policy is not None else env.action_space.sample()
        observation, reward, terminated, truncated, info = env.step(action)
        # The frame (and state) after the step: what the reward wrappers score for that step.
        frames.append(np.asarray(env.render(), dtype=np.uint8))
        observations.append(np.asarray(observation, dtype=np.float32).reshape(-1))
        rewards.append(float(info.get("true_reward", reward)))
        if terminated or truncated:
            break
    frames_array = np.stack(frames)
    learnt = None
    if model is not None:
        inputs = frames_array if model.config.kind == "cnn" else np.stack(observations)
        learnt = np.asarray(model.predict(inputs), dtype=np.float64)
    return ScoredEpisode(source, frames_array, np.asarray(rewards), learnt, bool(terminated))


def _score_with_labeler(episodes: list[ScoredEpisode], labeler: Any) -> None:
    """A frame labeler's reward on an even subsample of the rollout frames (NaN elsewhere)."""
    total = sum(len(e.frames) for e in episodes)
    stride = max(1, math.ceil(total / MAX_LABELER_FRAMES))
    for episode in episodes:
        picks = np.arange(0, len(episode.frames), stride)
        episode.labeller = np.full(len(episode.frames), np.nan)
        episode.labeller[picks] = labeler.label(episode.frames[picks])


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of finite pairs; NaN when a side is constant or < 3 points."""
    from vlmrl.eval_reward import correlations as pearson_spearman

    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return {"pearson": math.nan, "spearman": math.nan, "n": int(len(x))}
    return {**pearson_spearman(x, y), "n": int(len(x))}


# -- plots ----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from cycler import cycler
    from matplotlib import pyplot as plt

    plt.rcParams.update({
        "axes.prop_cycle": cycler(color=OKABE_ITO),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
        "figure.dpi": 100,
    })  # fmt: skip
    return plt


def figure_html(figure: Any, alt: str) -> str:
    """A matplotlib figure as an inline PNG ``<img>`` (the figure is closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return _img(buffer.getvalue(), alt, css_class="plot")


def _img(png: bytes, alt: str, css_class: str = "", width: int | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img class="{css_class}" src="data:image/png;base64,{data}" alt="{html.escape(alt)}"{size}>'


# The learning-curve panels: title, y-axis label, and the TensorBoard tags to plot (the first
# present wins). Per-frame runs log labeller/net means, preference runs log accuracies/returns.
CURVE_PANELS = (
    ("True return", "true episode return", ("reward/true_return", "rollout/ep_rew_mean")),
    ("Success rate", "share of episodes", ("rollout/success_rate", "reward/success_rate", "eval/success_rate")),
    ("Labeller reward", "mean label per frame", ("reward/labeler_mean",)),
    ("Labels vs the scripted teacher", "share of pairs", ("labels/accuracy_vs_oracle", "reward_model/heldout_accuracy")),
    ("Learnt reward", "mean learnt reward per frame", ("reward/net_mean",)),
    ("Learnt reward per episode", "episode return under the learnt reward", ("reward/learned_return", "reward/labelled_return")),
)


def _panels_present(scalars: dict[str, Series]) -> list[tuple[str, str, list[str]]]:
    panels = []
    for title, ylabel, tags in CURVE_PANELS:
        present = [t for t in tags if t in scalars]
        # Both accuracies belong on the teacher panel; elsewhere the first tag present is the curve.
        chosen = present if title.startswith("Labels") else present[:1]
        if chosen:
            panels.append((title, ylabel, chosen))
    return panels


def learning_curves_figure(runs: list[RunData]) -> Any | None:
    """One panel per quantity; one run as lines, several as mean (line) and min-max (band)."""
    merged = {tag for data in runs for tag in data.scalars}
    panels = _panels_present({tag: (np.zeros(0), np.zeros(0)) for tag in merged})
    if not panels:
        return None
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.1 * rows), squeeze=False)
    for axis, (title, ylabel, tags) in zip(axes.flat, panels):
        for colour, tag in zip(OKABE_ITO, tags):
            series = [data.scalars[tag] for data in runs if tag in data.scalars]
            label = tag if len(tags) > 1 else None
            if len(series) == 1:
                axis.plot(*series[0], color=colour, label=label, linewidth=1.6)
            else:
                grid, mean, low, high = _mean_and_spread(series)
                axis.plot(grid, mean, color=colour, linewidth=1.8,
                          label=f"{tag + ': ' if label else ''}mean of {len(series)} runs")
                axis.fill_between(grid, low, high, color=colour, alpha=0.25, linewidth=0,
                                  label=f"{tag + ': ' if label else ''}min-max")
        axis.set_title(title)
        axis.set_xlabel("env steps")
        axis.set_ylabel(ylabel)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels):]:
        axis.remove()
    figure.tight_layout()
    return figure


def _mean_and_spread(series: list[Series], points: int = 200) -> tuple[np.ndarray, ...]:
    """Runs interpolated on a common step grid (where all have data): mean, min and max."""
    start = max(float(steps[0]) for steps, _ in series)
    stop = min(float(steps[-1]) for steps, _ in series)
    grid = np.linspace(start, stop, points) if stop > start else np.array([start])
    values = np.stack([np.interp(grid, steps, vals) for steps, vals in series])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def tracking_figure(episodes: list[ScoredEpisode], horizon: int, which: str) -> tuple[Any, dict[str, float]]:
    """Scatter of ``which`` reward ("learnt" or "labeller") against the true return of ``horizon`` steps."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    xs, ys = [], []
    markers = {"policy": "o", "random": "^"}
    for colour, source in zip(OKABE_ITO, ("policy", "random")):
        chosen = [e for e in episodes if e.source == source]
        if not chosen:
            continue
        windows = [e.return_to_go(horizon) for e in chosen]
        x = np.concatenate([totals[known] for totals, known in windows])
        y = np.concatenate([getattr(e, which)[known] for e, (_, known) in zip(chosen, windows)])
        axis.scatter(x, y, s=12, alpha=0.5, color=colour, marker=markers[source],
                     label=f"{SOURCE_NAMES[source]} ({len(chosen)} episode{'s' if len(chosen) > 1 else ''})")
        xs.append(x)
        ys.append(y)
    stats = correlations(np.concatenate(xs), np.concatenate(ys)) if xs else correlations(np.zeros(0), np.zeros(0))
    axis.set_xlabel("true reward per step" if horizon == 1 else f"true return of the next {horizon} steps")
    axis.set_ylabel(f"{which} reward (net output)" if which == "learnt" else "labeller reward")
    axis.set_title(f"Pearson {_fmt(stats['pearson'])}, Spearman {_fmt(stats['spearman'])} (n = {stats['n']})")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure, stats


def filmstrip_figure(episode: ScoredEpisode, horizon: int, frames_shown: int = 8) -> Any:
    """Frames of one episode in a row, with the per-step learnt (and true) reward drawn under them."""
    plt = _pyplot()
    steps = len(episode.frames)
    picks = np.unique(np.linspace(0, steps - 1, min(frames_shown, steps)).round().astype(int))
    figure = plt.figure(figsize=(11, 4.4))
    grid = figure.add_gridspec(2, len(picks), height_ratios=(1.0, 1.5), hspace=0.35)
    for column, step in enumerate(picks):
        axis = figure.add_subplot(grid[0, column])
        axis.imshow(episode.frames[step])
        axis.set_title(f"step {step}", fontsize=8)
        axis.axis("off")
    axis = figure.add_subplot(grid[1, :])
    t = np.arange(steps)
    if episode.learnt is not None:
        axis.plot(t, episode.learnt, color=OKABE_ITO[0], linewidth=1.6, label="learnt reward (net output)")
        axis.set_ylabel("learnt reward")
    if episode.labeller is not None:
        known = np.isfinite(episode.labeller)
        axis.plot(t[known], episode.labeller[known], "o-", color=OKABE_ITO[2], markersize=3, label="labeller reward")
    for step in picks:
        axis.axvline(step, color="#999999", linewidth=0.6, linestyle=":")
    truth = axis.twinx()
    totals, known = episode.return_to_go(horizon)
    truth_label = "true reward" if horizon == 1 else f"true return of the next {horizon} steps"
    truth.plot(t[known], totals[known], color=OKABE_ITO[1], linestyle="--", linewidth=1.4, label=truth_label)
    truth.set_ylabel(truth_label)
    truth.grid(False)
    truth.spines["right"].set_visible(True)
    axis.set_xlabel("step of the episode")
    axis.set_xlim(-0.5, steps - 0.5)
    handles = axis.get_legend_handles_labels()[0] + truth.get_legend_handles_labels()[0]
    labels = axis.get_legend_handles_labels()[1] + truth.get_legend_handles_labels()[1]
    axis.legend(handles, labels, fontsize=8, loc="lower left")
    outcome = "ended by termination" if episode.terminated else "truncated"
    figure.suptitle(f"{SOURCE_NAMES[episode.source]}: {steps} steps, {outcome}, true return {episode.true_rewards.sum():.1f}", fontsize=10)
    return figure


def offline_results_figure(columns: dict[str, dict[str, list[float]]]) -> Any:
    """Bars of mean +- std over seeds per method, each seed a dot; one panel per measure
    (``true return``, and ``success rate`` where the env reports success)."""
    plt = _pyplot()
    names = list(next(iter(columns.values())))
    figure, axes = plt.subplots(1, len(columns), figsize=((1.4 * len(names) + 3) * len(columns), 3.8), squeeze=False)
    positions = np.arange(len(names))
    colours = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(names))]
    for axis, (measure, results) in zip(axes.flat, columns.items()):
        present = [m for m in names if results.get(m)]
        means = [float(np.mean(results[m])) if m in present else 0.0 for m in names]
        stds = [float(np.std(results[m])) if m in present else 0.0 for m in names]
        axis.bar(positions, means, yerr=stds, capsize=6, color=colours, alpha=0.85)
        for position, method in zip(positions, names):
            values = results.get(method, [])
            axis.scatter(np.full(len(values), position), values, color="black", s=14, zorder=3,
                         label="one seed" if position == 0 else None)
        axis.set_xticks(positions, names)
        axis.set_xlabel("method")
        axis.set_ylabel(f"{measure} (mean over evaluation episodes)")
        axis.set_title(f"{measure}: mean +- std over seeds")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


# -- HTML sections --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] | None = None) -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><th scope='row'>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(title: str, build: Callable[[], str]) -> str:
    """A section; if building it fails, the page says so (with the error) instead of breaking."""
    try:
        body = build()
    except Exception as error:  # noqa: BLE001 (a report must always be written)
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        body = _note(f"This section could not be drawn: {detail}")
    if not body:
        return ""
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{html.escape(anchor)}"><h2>{html.escape(title)}</h2>{body}</section>'


def overview_section(data: RunData) -> str:
    rows: list[tuple[str, Any]] = [("run directory", str(data.path.resolve()))]
    if data.kind == "online" and data.config is not None:
        config = data.config
        rows += [("task", config.task), ("env", config.env.id), ("labeller", config.labeler.name),
                 ("agent", config.agent.algo.upper()), ("seed", config.run.seed)]
    summary = data.summary or {}
    evaluation = summary.get("eval") or {}
    if evaluation:
        rows.append(("true return of the final policy",
                     f"{evaluation['true_return_mean']:.1f} +- {evaluation['true_return_std']:.1f} "
                     f"({evaluation['episodes']} episodes)"))
    if evaluation.get("success_rate") is not None:
        rows.append(("success rate of the final policy", _percent(evaluation["success_rate"])))
    if summary.get("success_rate") is not None:
        rows.append(("success rate over the training episodes", _percent(summary["success_rate"])))
    status = "finished" if data.summary is not None else "not finished (no summary.json)"
    if data.kind == "offline":
        status = "finished" if (data.path / "results.csv").is_file() else "not finished (no results.csv)"
    rows.append(("status", status))
    missing = ""
    if data.missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in data.missing)
        missing = f'<div class="missing"><strong>Missing from this run:</strong><ul>{items}</ul></div>'
    return _table(rows) + missing


def curves_section(data: RunData, group: list[RunData]) -> str:
    parts = []
    figure = learning_curves_figure([data])
    if figure is None:
        return _note("No learning curves: the run logged no TensorBoard scalars (tb/ is missing or empty).")
    parts.append(figure_html(figure, "learning curves of this run"))
    parts.append(_note("x: env steps summed over all envs. True return: the environment's own reward, never "
                       "given to the agent. Values are means over the episodes finished in each rollout."))
    if len(group) > 1:
        seeds_figure = learning_curves_figure(group)
        names = ", ".join(html.escape(m.path.name) for m in group)
        parts.append(f"<h3>All {len(group)} runs of this task and labeller</h3>")
        if seeds_figure is not None:
            parts.append(figure_html(seeds_figure, "learning curves, mean and spread over runs"))
        parts.append(_note(f"Line: mean over runs; band: min to max. Runs: {names}."))
    return "".join(parts)


def tracking_section(data: RunData, rollouts: bool) -> tuple[str, list[ScoredEpisode]]:
    if data.config is None:
        return _note("Skipped: the run's config could not be loaded."), []
    if not rollouts:
        return _note("Skipped (--no-rollouts)."), []
    started = time.perf_counter()
    episodes, notes = score_rollouts(data)
    seconds = time.perf_counter() - started
    horizon = data.config.preference.segment_length if data.config.labeler.family == "pair" else 1
    parts = [_note(n) for n in notes]
    parts.append(_note(
        f"{sum(e.source == 'policy' for e in episodes)} episode(s) of the saved policy (deterministic) and "
        f"{sum(e.source == 'random' for e in episodes)} of a random policy, each step scored by the saved reward net "
        f"({seconds:.1f} s). "
        + ("The true value is the true return of the next "
           f"{horizon} steps (zero after a termination), the quantity the scripted teacher ranks segments by; "
           "steps whose window runs past a truncation are left out." if horizon > 1 else "")
    ))
    for which in ("learnt", "labeller"):
        if any(getattr(e, which) is not None for e in episodes):
            figure, stats = tracking_figure(episodes, horizon, which)
            parts.append(figure_html(figure, f"{which} reward against the true reward"))
            parts.append(_table([(f"Pearson correlation, {which} vs true", stats["pearson"]),
                                 (f"Spearman correlation, {which} vs true", stats["spearman"]),
                                 ("steps compared", stats["n"])]))
    if episodes and all(e.learnt is None and e.labeller is None for e in episodes):
        parts.append(_note("No reward to compare: the run saved no reward net."))
    for source in ("policy", "random"):
        episode = next((e for e in episodes if e.source == source), None)
        if episode is not None:
            parts.append(figure_html(filmstrip_figure(episode, horizon), f"filmstrip of a {source}-policy episode"))
    return "".join(parts), episodes


def preference_section(data: RunData) -> str:
    config, summary = data.config, data.summary or {}
    if config is None or config.labeler.family != "pair":
        return ""
    parts = []
    from vlmrl.runs import label_store_path

    store_path = label_store_path(config, data.path)
    store_rows = _label_store_rows(store_path)
    asked = summary.get("pairs_asked", data.last("labels/asked"))
    counts = [
        ("pairs asked (budget " + f"{config.preference.budget:,})", asked),
        ("answered (a label, ties included)", summary.get("pairs_labelled", data.last("labels/answered"))),
        ("of which ties", data.last("labels/ties")),
        ("unsure", data.last("labels/unsure")),
        ("failed (no answer came back)", data.last("labels/failed")),
        ("answered from the label store (asked before)", data.last("labels/cached")),
        ("agreement with the scripted teacher (decisive pairs with unequal true returns)",
         _percent(summary.get("label_accuracy_vs_oracle", data.last("labels/accuracy_vs_oracle")))),
        ("reward net: held-out accuracy of the last fit",
         _percent(summary.get("heldout_accuracy", data.last("reward_model/heldout_accuracy")))),
        ("reward fits", summary.get("reward_fits", data.last("reward_model/fits"))),
    ]
    parts.append(_table([(k, _as_number(v)) for k, v in counts if v is not None], header=("labels", "value")))
    if store_rows is not None:
        parts.append(_store_summary(store_path, store_rows))
        grid = _store_pairs_grid(store_rows)
    else:
        grid = _checkpoint_pairs_grid(data)
    parts.append(grid or _note("No asked pair can be shown: the labeller kept no frames (the scripted teacher "
                               "reads true returns only) and no checkpoint holds the pairs' net inputs."))
    return "".join(parts)


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"


def _as_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) > 1.5:
        return int(value)
    return value


def _label_store_rows(path: Path) -> list[Any] | None:
    if not path.is_file():
        return None
    from vlmrl.label_store import LabelStore

    with LabelStore(path) as store:
        return list(store.iter_rows())


def _store_summary(path: Path, rows: list[Any]) -> str:
    from vlmrl.label_store import summarise_labels

    summary = summarise_labels(rows)
    compared = sum(b.compared for b in summary.buckets)
    agreeing = sum(b.agreeing for b in summary.buckets)
    table = [(f"rows with status '{status}'", count) for status, count in summary.counts.items()]
    table.append(("agreement with the scripted teacher (pairs with known, unequal true rewards)",
                  f"{_percent(agreeing / compared)} ({agreeing}/{compared})" if compared else "n/a (no true rewards stored)"))
    return f"<h3>Label store {html.escape(path.name)}</h3>" + _table(table)


def _store_pairs_grid(rows: list[Any]) -> str:
    shown = [r for r in rows if r.thumb_first is not None and r.thumb_second is not None][:PAIRS_IN_GRID]
    if not shown:
        return ""
    cells = []
    for row in shown:
        answer = "image 1 preferred" if row.label == 1.0 else "image 2 preferred" if row.label == 0.0 else row.status
        truth = ""
        if row.true_reward_first is not None and row.true_reward_second is not None:
            truth = f"<br>true: {row.true_reward_first:.3g} vs {row.true_reward_second:.3g}"
        texts = "".join(
            f"<details><summary>{name}</summary><pre>{html.escape(text)}</pre></details>"
            for name, text in (("analysis", row.analysis), ("answer text", row.answer)) if text
        )
        cells.append(_pair_cell(row.thumb_first, row.thumb_second, f"<strong>{html.escape(answer)}</strong>{truth}{texts}"))
    return f"<h3>Asked pairs (first {len(shown)})</h3><div class='pairs'>{''.join(cells)}</div>"


def _checkpoint_pairs_grid(data: RunData) -> str:
    """Pairs from the newest checkpoint's pair arrays (net inputs: frames for a cnn net)."""
    from vlmrl.label_store import encode_png

    for checkpoint in reversed(data.checkpoints):
        for npz in sorted(checkpoint.glob("*.npz")):
            with np.load(npz) as arrays:
                by_suffix = {key.rsplit(".", 1)[-1]: key for key in arrays.files}
                needed = ("first", "second", "labels")
                if not all(k in by_suffix for k in needed):
                    continue
                first, second = arrays[by_suffix["first"]], arrays[by_suffix["second"]]
                if first.ndim != 4 or first.dtype != np.uint8:
                    return ""  # state inputs (mlp net): nothing to look at
                labels = arrays[by_suffix["labels"]]
                true = [arrays[by_suffix[k]] if k in by_suffix else None for k in ("true_first", "true_second")]
            cells = []
            for i in np.linspace(0, len(labels) - 1, min(PAIRS_IN_GRID, len(labels))).astype(int):
                label = float(labels[i])
                answer = ("left preferred" if label == 1.0 else "right preferred" if label == 0.0
                          else "tie" if label == 0.5 else "no label")
                truth = f"<br>true segment returns: {true[0][i]:.3g} vs {true[1][i]:.3g}" if true[0] is not None else ""
                cells.append(_pair_cell(encode_png(first[i]), encode_png(second[i]), f"<strong>{answer}</strong>{truth}"))
            return (f"<h3>Asked pairs ({len(cells)} of {len(labels)}, from {html.escape(checkpoint.name)})</h3>"
                    "<p class='note'>What the reward net saw of each side (the first frame of its segment) "
                    f"and the labeller's answer.</p><div class='pairs'>{''.join(cells)}</div>")
    return ""


def _pair_cell(first_png: bytes, second_png: bytes, caption: str) -> str:
    return (f"<figure class='pair'><div>{_img(first_png, 'first frame', 'thumb')}{_img(second_png, 'second frame', 'thumb')}"
            f"</div><figcaption>{caption}</figcaption></figure>")


def clip_section(data: RunData, episodes: list[ScoredEpisode]) -> str:
    config = data.config
    if config is None or config.labeler.kind != "clip":
        return ""
    labeler = config.labeler
    rows = [("model", f"{labeler.model} ({labeler.pretrained or 'random weights'}, {labeler.backend})"),
            ("goal prompts", " | ".join(labeler.goal_prompts)),
            ("baseline prompts", " | ".join(labeler.baseline_prompts)),
            ("alpha (goal-baseline regularisation)", labeler.alpha)]
    scored = [e for e in episodes if e.labeller is not None]
    note = ("CLIP reward against the true reward: see the labeller scatter above." if scored else
            "CLIP reward against the true reward: not computed (the labeller could not be loaded or rollouts were skipped).")
    return _table(rows) + _note(note)


def offline_loss_curves(run_dir: Path) -> dict[str, dict[str, list[Series]]]:
    """method -> loss tag -> one series per seed, from ``<method>/seed_<s>/tensorboard``."""
    curves: dict[str, dict[str, list[Series]]] = {}
    for seed_dir in sorted(run_dir.glob("*/seed_*")):
        for tag, series in read_scalars(seed_dir / "tensorboard").items():
            if tag.endswith("loss"):
                curves.setdefault(seed_dir.parent.name, {}).setdefault(tag, []).append(series)
    return curves


def offline_curves_figure(curves: dict[str, dict[str, list[Series]]]) -> Any:
    """One panel per method: each loss as mean over seeds (line) and min-max (band)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for axis, (method, tags) in zip(axes.flat, curves.items()):
        for colour, (tag, series) in zip(OKABE_ITO, sorted(tags.items())):
            grid, mean, low, high = _mean_and_spread(series)
            axis.plot(grid, mean, color=colour, label=tag.split("/")[-1])
            if len(series) > 1:
                axis.fill_between(grid, low, high, color=colour, alpha=0.25, linewidth=0)
        axis.set_title(method)
        axis.set_xlabel("gradient steps")
        axis.set_ylabel("training loss")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def offline_section(data: RunData) -> str:
    columns = read_offline_results(data.path)
    curves = offline_loss_curves(data.path)
    losses = ""
    if curves:
        losses = ("<h3>Training losses</h3>" + figure_html(offline_curves_figure(curves), "offline training losses")
                  + _note("Line: mean over seeds; band: min to max."))
    if not columns:
        return _note("No results.csv yet: no method has finished for every seed.") + losses
    measures = list(columns)
    head = "".join(f"<th>{html.escape(m)} (mean +- std over seeds)</th>" for m in measures)
    rows = []
    for method, returns in columns["true return"].items():
        cells = "".join(
            f"<td>{np.mean(columns[m][method]):.2f} +- {np.std(columns[m][method]):.2f}</td>"
            if columns[m].get(method) else "<td>n/a</td>" for m in measures
        )
        rows.append(f"<tr><th scope='row'>{html.escape(method)}</th>{cells}<td>{len(returns)}</td></tr>")
    return (figure_html(offline_results_figure(columns), "offline results per method")
            + f"<table><tr><th>method</th>{head}<th>seeds</th></tr>{''.join(rows)}</table>"
            + _note("iql: IQL on the dataset's (relabelled) rewards; bc: behaviour cloning; "
                    "iql-gt: IQL on the true rewards of the same transitions.") + losses)


def read_offline_results(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """``results.csv`` as measure -> method -> one value per seed: ``true return`` always,
    ``success rate`` where the file has that column (envs that report success)."""
    path = run_dir / "results.csv"
    if not path.is_file():
        return {}
    columns: dict[str, dict[str, list[float]]] = {"true return": {}}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            columns["true return"].setdefault(row["method"], []).append(float(row["mean_true_return"]))
            if row.get("success_rate"):
                columns.setdefault("success rate", {}).setdefault(row["method"], []).append(float(row["success_rate"]))
    return columns


def video_section(data: RunData) -> str:
    if not data.videos:
        return _note("No video: this run recorded none (videos/ is missing or empty; "
                     "`vlmrl record RUN_DIR` writes one from the saved policy).")
    video = data.videos[-1]
    size_mb = video.stat().st_size / 2**20
    caption = _note(f"{video.relative_to(data.path)} ({size_mb:.2f} MB), the saved policy on the true task.")
    if size_mb > MAX_EMBEDDED_VIDEO_MB:
        return _note(f"{video} is {size_mb:.0f} MB, too large to embed; open it beside this page.")
    data_uri = base64.b64encode(video.read_bytes()).decode("ascii")
    return (f'<video controls muted loop playsinline preload="auto" src="data:video/mp4;base64,{data_uri}">'
            "your browser cannot play MP4 videos</video>" + caption)


def timing_section(data: RunData) -> str:
    summary = data.summary or {}
    steps, seconds = summary.get("env_steps"), summary.get("train_seconds")
    rate = steps / seconds if steps and seconds else data.last("time/env_steps_per_s")
    is_pair = data.config is not None and data.config.labeler.family == "pair"
    calls = summary.get("pairs_asked") if is_pair else summary.get("labeler_calls", data.last("labeler/calls"))
    rows = [
        ("env steps" + ("" if steps is not None else " (last logged)"), steps if steps is not None else data.last_step()),
        ("training wall time (s)", seconds),
        ("env steps per second", rate),
        ("labeller calls" + (" (pairs asked)" if is_pair else " (batched calls)"), calls),
        ("frames labelled", summary.get("labelled_frames", data.last("labeler/frames"))),
        ("seconds spent labelling", data.last("time/label_seconds")),
        ("seconds spent fitting the reward net", data.last("time/fit_seconds")),
    ]
    return _table([(k, _as_number(v)) for k, v in rows if v is not None] or [("timing", "not recorded")])


def config_section(data: RunData) -> str:
    error = _note(f"The config could not be loaded: {data.config_error}") if data.config_error else ""
    text = data.config_text or "(no config file)"
    return error + f"<pre class='config'>{html.escape(text)}</pre>"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1rem 1.5rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; }
img.plot { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
img.thumb { width: 128px; image-rendering: pixelated; border: 1px solid #ccc; margin-right: 4px; }
video { width: 480px; max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0; } th, td { text-align: left; padding: 0.2rem 0.8rem 0.2rem 0;
  border-bottom: 1px solid #eee; vertical-align: top; } th[scope=row] { font-weight: 500; color: #444; }
.note { color: #555; font-size: 0.9rem; } .missing { background: #fff4e0; border-left: 4px solid #E69F00;
  padding: 0.3rem 0.8rem; margin: 0.5rem 0; }
.pairs { display: flex; flex-wrap: wrap; gap: 1rem; } figure.pair { margin: 0; max-width: 280px; font-size: 0.85rem; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; white-space: pre-wrap; }
nav a { margin-right: 0.8rem; }
"""


def render_page(data: RunData, group: list[RunData], rollouts: bool) -> str:
    """The whole page for one run."""
    sections = [_section("Overview", lambda: overview_section(data))]
    if data.kind == "online":
        sections.append(_section("Learning curves", lambda: curves_section(data, group)))
        episodes: list[ScoredEpisode] = []

        def tracking() -> str:
            body, found = tracking_section(data, rollouts)
            episodes.extend(found)
            return body

        sections.append(_section("Does the learnt reward track the task", tracking))
        sections.append(_section("Preference labels", lambda: preference_section(data)))
        sections.append(_section("CLIP reward", lambda: clip_section(data, episodes)))
    else:
        sections.append(_section("Offline results", lambda: offline_section(data)))
    sections.append(_section("Video", lambda: video_section(data)) if data.kind == "online" else "")
    sections.append(_section("Timing", lambda: timing_section(data)) if data.kind == "online" else "")
    sections.append(_section("Resolved config", lambda: config_section(data)))
    body = "".join(s for s in sections if s)
    titles = [t for t in ("Overview", "Learning curves", "Does the learnt reward track the task", "Preference labels",
                          "CLIP reward", "Offline results", "Video", "Timing", "Resolved config")
              if f'id="{t.lower().replace(" ", "-")}"' in body]
    nav = "".join(f'<a href="#{t.lower().replace(" ", "-")}">{html.escape(t)}</a>' for t in titles)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='icon' href='data:,'><title>vlmrl report: {html.escape(data.path.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>vlmrl report: {html.escape(data.path.name)}</h1>"
            f"<p class='note'>written {stamp} by vlmrl report</p><nav>{nav}</nav>{body}</body></html>")


def write_report(run_dir: Path, group: list[RunData] | None = None, rollouts: bool = True) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Call it at the end of ``vlmrl train`` (online and offline): it reads everything from the
    run directory, so it needs nothing from the training process. Parts the run lacks (no
    video, no summary, no checkpoint) are named on the page; it raises only
    :class:`UserError` for a folder that is not a run directory.

    Args:
        run_dir: an online run directory (``config.yaml``) or offline one (``config.json``/``results.csv``).
        group: other runs of the same task and labeler (seeds), this one included, whose
            curves are drawn as mean and spread; None or one run for none.
        rollouts: roll the saved policy out to check the learnt reward (a few seconds).
    """
    return _write(read_run(Path(run_dir)), group or [], rollouts)


def _write(data: RunData, group: list[RunData], rollouts: bool) -> Path:
    path = data.path / REPORT_FILE
    path.write_text(render_page(data, group, rollouts), encoding="utf-8")
    return path
