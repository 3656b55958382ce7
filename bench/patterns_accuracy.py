"""Grouping accuracy (GA) of the template miner on the Loghub-2k samples, one default config.

    python bench/patterns_accuracy.py [DIR] [--errors N]

DIR defaults to ../shared/data/loghub next to the project. Every `<S>/<S>_2k.log_structured_
corrected.csv` found is scored: the miner's input is the Content column stripped; a line counts as
right only when the set of lines in its predicted group equals the set of lines sharing its true
EventId. Prints `<system> GA <value>` per system and, last, `mean GA <value>`. `--errors N` also
prints up to N wrongly grouped true events per system (for working on the miner).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from backend.patterns import Cluster, mine  # noqa: E402

DEFAULT_DIR = ROOT / ".." / "shared/data/loghub"


def load(path: Path) -> tuple[list[str], list[str]]:
    """(contents, event ids) of one structured CSV."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"].strip() for r in rows], [r["EventId"] for r in rows]


def grouping_accuracy(truth: Sequence[str], predicted: Sequence[int]) -> float:
    """Share of lines whose predicted group is exactly their true group."""
    true_groups: dict[str, set[int]] = defaultdict(set)
    pred_groups: dict[int, set[int]] = defaultdict(set)
    for i, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        true_groups[t].add(i)
        pred_groups[p].add(i)
    right = sum(
        len(members)
        for members in true_groups.values()
        if pred_groups[predicted[min(members)]] == members
    )
    return right / len(truth) if truth else 1.0


def systems(root: Path) -> list[tuple[str, Path]]:
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        csv_path = d / f"{d.name}_2k.log_structured_corrected.csv"
        if csv_path.is_file():
            found.append((d.name, csv_path))
    return found


def show_errors(
    contents: Sequence[str],
    truth: Sequence[str],
    predicted: Sequence[int],
    clusters: dict[int, Cluster],
    limit: int,
) -> None:
    true_groups: dict[str, list[int]] = defaultdict(list)
    pred_groups: dict[int, set[int]] = defaultdict(set)
    for i, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        true_groups[t].append(i)
        pred_groups[p].add(i)
    shown = 0
    for event, members in sorted(true_groups.items(), key=lambda kv: -len(kv[1])):
        preds = sorted({predicted[i] for i in members})
        if len(preds) == 1 and pred_groups[preds[0]] == set(members):
            continue
        shown += 1
        if shown > limit:
            break
        print(f"  {event} ({len(members)} lines) -> {len(preds)} predicted group(s)")
        for p in preds[:4]:
            outsiders = sorted({truth[i] for i in pred_groups[p]} - {event})
            print(f"    [{p}] {clusters[p].template[:150]}  (+{outsiders[:6]})")
        print(f"    e.g. {contents[members[0]][:150]}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--errors", type=int, default=0, metavar="N")
    args = ap.parse_args(argv)
    root: Path = args.dir.resolve()
    if not root.is_dir():
        print(f"no Loghub folder at {root}", file=sys.stderr)
        return 2
    found = systems(root)
    if not found:
        print(f"no <S>/<S>_2k.log_structured_corrected.csv under {root}", file=sys.stderr)
        return 2
    scores = []
    for name, path in found:
        contents, truth = load(path)
        predicted, clusters = mine(contents)
        ga = grouping_accuracy(truth, predicted)
        scores.append(ga)
        print(f"{name} GA {ga:.3f}", flush=True)
        if args.errors:
            show_errors(contents, truth, predicted, clusters, args.errors)
    print(f"mean GA {sum(scores) / len(scores):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
