"""`vlmrl label-pairs STORE`: inspect a preference label store.

Prints the number of rows per status, the parse rate (answers read as 0, 1 or -1 among all
answers; failed queries brought none), the share of each answer kind and, where the true rewards
of the frames were stored (`compare(..., true_rewards=...)`) or are given with
`--oracle-rewards`, the agreement of the VLM's labels with the scripted teacher: the fraction of
answered pairs whose label matches `sign(r_first - r_second)` (pairs with equal rewards are left
out and counted as ties), overall and per confidence bucket of max(p_first, p_second) for
answers read from token probabilities (`answer_mode: logprobs`).

`--reparse` reads every stored answer again with the current parser and updates the labels
that change, without asking the VLM (one transaction: all or nothing). Failed queries have no
answer to read, and labels read from token probabilities are kept.
Optionally exports every row (CSV or JSON lines) and draws a PNG grid of example pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

EXPORT_FIELDS = (
    "key",
    "status",
    "label",
    "goal",
    "answer",
    "analysis",
    "error",
    "attempts",
    "true_reward_first",
    "true_reward_second",
    "first_hash",
    "second_hash",
    "config_json",
    "created_at",
    "updated_at",
    "p_first",
    "p_second",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label-pairs",
        help="inspect a preference label store: counts, oracle agreement, export, example grid",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", type=Path, help="the label store (SQLite file, e.g. RUN_DIR/labels.sqlite)")
    parser.add_argument("--export", type=Path, help="write every row to this .csv or .jsonl file")
    parser.add_argument("--grid", type=Path, help="write a PNG grid of example pairs with their labels")
    parser.add_argument("--n", type=int, default=8, help="pairs in the grid (default 8)")
    parser.add_argument(
        "--status",
        choices=("answered", "unsure", "unparseable", "failed"),
        help="only export / draw rows with this status",
    )
    parser.add_argument(
        "--oracle-rewards",
        type=Path,
        help="JSON object {frame_sha256: true_reward} for stores filled without true rewards",
    )
    parser.add_argument(
        "--reparse",
        action="store_true",
        help="read every stored answer again with the current parser and update the labels that change "
        "(no VLM request)",
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Agreement:
    """Agreement of answered labels with the true-reward preference."""

    compared: int  # answered pairs with both true rewards and unequal rewards
    agreeing: int
    ties: int  # answered pairs whose true rewards are equal

    @property
    def fraction(self) -> float:
        return self.agreeing / self.compared if self.compared else math.nan


def oracle_agreement(rows, oracle: dict[str, float] | None = None) -> Agreement:
    """Agreement over answered rows whose two true rewards are known (stored, or in ``oracle``)."""
    compared = agreeing = ties = 0
    for row in rows:
        if row.status != "answered":
            continue
        r1 = row.true_reward_first if row.true_reward_first is not None else (oracle or {}).get(row.first_hash)
        r2 = row.true_reward_second if row.true_reward_second is not None else (oracle or {}).get(row.second_hash)
        if r1 is None or r2 is None:
            continue
        if r1 == r2:
            ties += 1
            continue
        compared += 1
        agreeing += int(row.label == (1.0 if r1 > r2 else 0.0))
    return Agreement(compared, agreeing, ties)


@dataclass
class Reparse:
    """What ``--reparse`` did: ``parsed`` answers read again, ``changes[(old kind, new kind)]``
    rows per change of answer kind (``image 1``, ``image 2``, ``unsure``, ``unparseable``)."""

    parsed: int = 0
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    def describe(self) -> str:
        text = f"re-parsed {self.parsed} answers: {self.changed} changed"
        if self.changes:
            moves = ", ".join(f"{old} -> {new}: {count}" for (old, new), count in sorted(self.changes.items()))
            text += f" ({moves})"
        return text


def reparse_store(store) -> Reparse:
    """Read every final row's raw answer again with ``prompts.parse_answer`` and commit the
    status and label changes in one transaction. Rows whose label came from token
    probabilities (``p_first`` set) are left alone, as are failed rows (no answer)."""
    from vlmrl.label_store import LabelRow, answer_kind
    from vlmrl.reward_labelers.preference import outcome_from_answer

    result = Reparse()

    def decide(row: LabelRow):
        if row.p_first is not None or row.p_second is not None:
            return None
        result.parsed += 1
        outcome = outcome_from_answer(row.answer, row.analysis, 0)
        if outcome.status == row.status:
            # Keep the stored error of an unchanged row (e.g. "empty analysis").
            return outcome.status, outcome.label, row.error
        return outcome.status, outcome.label, outcome.error

    for row, status, label in store.rewrite_labels(decide):
        result.changes[(row.answer_kind, answer_kind(status, label))] += 1
    return result


def print_summary(summary, total: int) -> None:
    """The parse rate, the answer kinds and the agreement per confidence bucket."""
    if summary.answers:
        print(f"parse rate: {summary.parse_rate:.3f} ({summary.parsed}/{summary.answers} answers read as 0, 1 or -1; "
              f"{summary.counts['failed']} failed queries brought no answer)")
    else:
        print("parse rate: n/a (no answers)")
    labels = {"image 1": "image 1 (0)", "image 2": "image 2 (1)", "unsure": "unsure (-1)"}
    kinds = ", ".join(
        f"{labels.get(kind, kind)} {count}" + (f" ({100 * count / total:.1f}%)" if total else "")
        for kind, count in summary.kinds.items()
    )
    print(f"answer kinds: {kinds}")
    if not summary.with_probabilities:
        print("agreement by confidence: n/a (no answer has token probabilities; answer_mode: logprobs stores them)")
        return
    print("agreement by confidence max(p_first, p_second):")
    for bucket in summary.buckets:
        agreement = f"{bucket.fraction:.3f} ({bucket.agreeing}/{bucket.compared})" if bucket.compared else "n/a"
        print(f"  {bucket.name:<17} {agreement:<18} {bucket.answered} answered")


def export_rows(rows, path: Path) -> int:
    """Write rows (without thumbnails) to ``path`` as CSV or JSON lines; returns the row count."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        from vlmrl.errors import UserError

        raise UserError(f"--export must end in .csv or .jsonl, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_FIELDS) if suffix == ".csv" else None
        if writer is not None:
            writer.writeheader()
        for row in rows:
            record = {field: getattr(row, field) for field in EXPORT_FIELDS}
            if writer is not None:
                writer.writerow(record)
            else:
                record["config"] = json.loads(record.pop("config_json"))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def caption(row) -> str:
    if row.status == "answered":
        verdict = "image 1 better" if row.label == 1.0 else "image 2 better"
    else:
        verdict = row.status
    if row.true_reward_first is not None and row.true_reward_second is not None:
        verdict += f"  (r1={row.true_reward_first:.3g}, r2={row.true_reward_second:.3g})"
    return verdict


def draw_grid(rows, path: Path, n: int) -> int:
    """Draw up to ``n`` pairs that have thumbnails, one per line with a caption; returns pairs drawn."""
    import io

    from PIL import Image, ImageDraw

    pairs = []
    for row in rows:
        if row.thumb_first is not None and row.thumb_second is not None:
            pairs.append((row, Image.open(io.BytesIO(row.thumb_first)), Image.open(io.BytesIO(row.thumb_second))))
        if len(pairs) == n:
            break
    if not pairs:
        return 0
    pad, text_h = 4, 14
    cell_w = max(a.width for _, a, _ in pairs)
    cell_h = max(max(a.height, b.height) for _, a, b in pairs)
    width = max(2 * cell_w + 3 * pad, 260)
    line_h = cell_h + text_h + 2 * pad
    grid = Image.new("RGB", (width, line_h * len(pairs)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (row, first, second) in enumerate(pairs):
        top = i * line_h + pad
        grid.paste(first.convert("RGB"), (pad, top))
        grid.paste(second.convert("RGB"), (2 * pad + cell_w, top))
        draw.text((pad, top + cell_h + 2), caption(row), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return len(pairs)


def check_store_file(path: Path) -> None:
    """A label store to inspect: an existing, non-empty SQLite file (UserError saying what it is otherwise)."""
    from vlmrl.errors import UserError
    from vlmrl.label_store import SQLITE_HEADER, file_header

    if path.is_dir():
        raise UserError(f"{path} is a folder; give the label store file (e.g. RUN_DIR/labels.sqlite)")
    if not path.exists():
        raise UserError(f"no label store at {path} (no such file)")
    try:
        header = file_header(path)
    except OSError as error:
        raise UserError(f"cannot read the label store {path}: {error.strerror}") from None
    if not header:
        raise UserError(f"{path} is empty, not a label store (a labeler creates one with its first answer)")
    if header != SQLITE_HEADER:
        raise UserError(f"{path} is not a vlmrl label store: not a SQLite file (it starts with {header[:16]!r})")


def run(args: argparse.Namespace) -> int:
    from vlmrl.errors import UserError
    from vlmrl.label_store import STATUSES, LabelStore
    from vlmrl.locks import check_writable_dir

    check_store_file(args.store)
    if args.n < 1:
        raise UserError("--n must be >= 1")
    for option, path in (("--export", args.export), ("--grid", args.grid)):
        if path is not None:  # checked before any work: a bad output path costs nothing
            check_writable_dir(path.parent, f"{option} {path.name}")
    oracle = None
    if args.oracle_rewards is not None:
        if not args.oracle_rewards.is_file():
            raise UserError(f"--oracle-rewards: no such file {args.oracle_rewards}")
        try:
            oracle = {str(k): float(v) for k, v in json.loads(args.oracle_rewards.read_text()).items()}
        except (OSError, ValueError, AttributeError) as error:
            raise UserError(f"--oracle-rewards {args.oracle_rewards} must be a JSON object "
                            f"{{frame_sha256: reward}}: {error}") from None
    if args.reparse:
        if not os.access(args.store, os.W_OK):
            raise UserError(f"--reparse rewrites labels, but {args.store} is not writable")
        check_writable_dir(args.store.parent, "--reparse's SQLite journal")
    try:
        # Inspecting never writes: only --reparse (and a store of an older schema) opens for writing.
        store = LabelStore(args.store, read_only=not args.reparse)
        counts = store.counts()
    except (sqlite3.DatabaseError, ValueError) as error:
        raise UserError(f"{args.store} is not a vlmrl label store: {error}") from None
    with store:
        if args.reparse:
            print(reparse_store(store).describe())
            counts = store.counts()
        total = sum(counts.values())
        print(f"{args.store}: {total} pairs")
        for status in STATUSES:
            share = f"{100 * counts[status] / total:5.1f}%" if total else "    -"
            print(f"  {status:<12} {counts[status]:>7}  {share}")
        agreement = oracle_agreement(store.iter_rows(), oracle)
        if agreement.compared:
            print(
                f"oracle agreement: {agreement.fraction:.3f} ({agreement.agreeing}/{agreement.compared} answered "
                f"pairs with known, unequal true rewards; {agreement.ties} ties left out)"
            )
        else:
            print("oracle agreement: n/a (no answered pair with known true rewards)")
        print_summary(store.summary(oracle), total)
        if args.export is not None:
            written = export_rows(store.iter_rows(args.status), args.export)
            print(f"exported {written} rows to {args.export}")
        if args.grid is not None:
            drawn = draw_grid(store.iter_rows(args.status), args.grid, args.n)
            if drawn == 0:
                raise UserError("no stored pair has thumbnails to draw (labelers store them unless thumbnail_size=0)")
            print(f"wrote {drawn} pairs to {args.grid}")
    return 0
