"""Reading a run back: TensorBoard scalars, step-indexed metric CSVs and `ultragen test`'s metric table, plotted."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

Scalars = dict[str, list[tuple[int, float]]]

LINESTYLES = ("-", "--", ":", "-.")  # runs drawn over each other stay distinguishable


def read_scalars(logdir: str | Path, tags: Sequence[str] | None = None) -> Scalars:
    """tag -> [(step, value)] in logged order, from the TensorBoard event files directly in `logdir` (one run).

    Every logged point is kept (TensorBoard's default keeps a sample of at most 10,000 per tag). `tags` selects
    tags; an unknown one raises naming the tags present.
    """
    logdir = Path(logdir)
    if not logdir.is_dir() or not any(logdir.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event files (events.out.tfevents.*) directly in {logdir}")
    events = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})
    events.Reload()
    present = events.Tags()["scalars"]
    missing = sorted(set(tags or ()) - set(present))
    if missing:
        raise KeyError(f"scalar tags {missing} are not in {logdir}; present: {sorted(present)}")
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in (tags or present)}


def read_csv_scalars(path: str | Path, step: str = "step") -> Scalars:
    """column -> [(step, value)] from a CSV with a `step` column (Lightning's CSVLogger `metrics.csv`); empty cells
    are skipped, every other column must be numeric."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ())
        if step not in columns:
            raise ValueError(f"metric CSV {path} has no {step!r} column; columns: {columns}")
        scalars: Scalars = {name: [] for name in columns if name != step}
        for line, row in enumerate(reader, start=2):
            for name, points in scalars.items():
                if row[name]:
                    try:
                        points.append((int(row[step]), float(row[name])))
                    except ValueError as err:
                        raise ValueError(f"{path} line {line}, column {name!r}: {err}") from err
    return {name: points for name, points in scalars.items() if points}


def read_metric_table(path: str | Path) -> tuple[dict[str, float], dict[str, str]]:
    """(metric -> value, skipped metric -> reason) from the `test_metrics.csv` that `ultragen test` writes."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["metric", "value", "skipped"]:
            raise ValueError(f"{path} is not a metric table (columns metric,value,skipped): {reader.fieldnames}")
        rows = list(reader)
    values = {row["metric"]: float(row["value"]) for row in rows if row["value"]}
    return values, {row["metric"]: row["skipped"] for row in rows if not row["value"]}


def plot_scalars(runs: Mapping[str, Scalars], tags: Sequence[str] | None = None, ncols: int = 3) -> Figure:
    """One panel per tag (default: every tag of any run), one line per run that logged it, against step."""
    tags = list(tags) if tags is not None else sorted({tag for scalars in runs.values() for tag in scalars})
    if not tags:
        raise ValueError("plot_scalars has no tags to plot; pass runs with scalars or name tags")
    absent = [tag for tag in tags if not any(tag in scalars for scalars in runs.values())]
    if absent:
        raise KeyError(f"tags {absent} are in none of the runs {list(runs)}")
    nrows, ncols = math.ceil(len(tags) / ncols), min(ncols, len(tags))
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for i, (name, scalars) in enumerate(runs.items()):
            if tag in scalars:
                steps, values = zip(*scalars[tag])
                ax.plot(steps, values, marker=".", linestyle=LINESTYLES[i % len(LINESTYLES)], label=name)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(tags) :]:
        ax.axis("off")
    return fig
