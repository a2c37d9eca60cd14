"""`vlmrl label-pairs STORE`: inspect a preference label store.

Prints the number of rows per status and, where the true rewards of the frames were stored
(`compare(..., true_rewards=...)`) or are given with `--oracle-rewards`, the agreement of the
VLM's labels with the scripted teacher: the fraction of answered pairs whose label matches
`sign(r_first - r_second)` (pairs with equal rewards are left out and counted as ties).
Optionally exports every row (CSV or JSON lines) and draws a PNG grid of example pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
from dataclasses import dataclass
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


def run(args: argparse.Namespace) -> int:
    from vlmrl.errors import UserError
    from vlmrl.label_store import STATUSES, LabelStore

    if not args.store.is_file():
        raise UserError(f"no label store at {args.store}")
    if args.n < 1:
        raise UserError("--n must be >= 1")
    oracle = None
    if args.oracle_rewards is not None:
        try:
            oracle = {str(k): float(v) for k, v in json.loads(args.oracle_rewards.read_text()).items()}
        except (OSError, ValueError, AttributeError) as error:
            raise UserError(f"--oracle-rewards must be a JSON object {{frame_sha256: reward}}: {error}") from None
    try:
        store = LabelStore(args.store)
        counts = store.counts()
    except (sqlite3.DatabaseError, ValueError) as error:
        raise UserError(f"{args.store} is not a vlmrl label store: {error}") from None
    with store:
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
        if args.export is not None:
            written = export_rows(store.iter_rows(args.status), args.export)
            print(f"exported {written} rows to {args.export}")
        if args.grid is not None:
            drawn = draw_grid(store.iter_rows(args.status), args.grid, args.n)
            if drawn == 0:
                raise UserError("no stored pair has thumbnails to draw (labelers store them unless thumbnail_size=0)")
            print(f"wrote {drawn} pairs to {args.grid}")
    return 0
