"""The trade-off plots of ``hired compare``: accuracy against visual tokens kept, and accuracy
against images/s (the frontier each method traces as its budget moves), each with the full-token
accuracy and chance drawn as references.

Rows are plain dicts as ``hired compare`` builds them (``method``, ``budget``, ``accuracy``,
``visual_tokens_mean``, ``images_per_s``, ``chance``, ``dataset``, ``dataset_digest``). Runs over
different datasets are never silently mixed: the title says so (their accuracies are not
comparable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from .naming import budget_label

FULL_METHOD = "full"


def dataset_key(row: dict[str, Any]) -> str:
    """Which data a run read: its dataset's name and digest (only the name for older runs)."""
    name = row.get("dataset") or "?"
    return f"{name} ({row['dataset_digest']})" if row.get("dataset_digest") else name


def mixed_datasets_warning(rows: Sequence[dict[str, Any]]) -> str | None:
    """A line naming the datasets when the rows read more than one, else ``None``."""
    keys = list(dict.fromkeys(dataset_key(row) for row in rows))
    if len(keys) < 2:
        return None
    return f"WARNING: runs over {len(keys)} datasets, not comparable: {', '.join(keys)}"


def _finish(fig, axis, rows: list[dict[str, Any]], xlabel: str, metric: str, title: str):
    """Reference lines, labels, grid, legend and title shared by both plots; returns ``fig``."""
    _references(axis, rows)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _title(fig, title, rows)
    return fig


def _references(axis, rows: Sequence[dict[str, Any]]) -> None:
    """Dashed line at the full-token accuracy, dotted line at chance (when known)."""
    full = [row["accuracy"] for row in rows if row["method"] == FULL_METHOD and row["accuracy"] is not None]
    if full:
        value = sum(full) / len(full)
        axis.axhline(value, color="black", linestyle="--", linewidth=1, label=f"full tokens ({value:.3f})")
    chances = sorted({round(row["chance"], 6) for row in rows if row.get("chance") is not None})
    for value in chances:
        axis.axhline(value, color="grey", linestyle=":", linewidth=1.2, label=f"chance ({value:.3g})")


def _title(fig: Figure, title: str, rows: Sequence[dict[str, Any]]) -> None:
    warning = mixed_datasets_warning(rows)
    if warning:
        fig.suptitle(f"{title}\n{warning}", color="firebrick", fontsize=10)
    else:
        fig.suptitle(title)


def _method_points(rows: Sequence[dict[str, Any]], x: str) -> dict[str, list[tuple[float, float, str]]]:
    points: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows:
        if row.get(x) is None or row["accuracy"] is None:
            continue
        label = budget_label(row["budget"]) or ""
        points.setdefault(str(row["method"]), []).append((float(row[x]), float(row["accuracy"]), label))
    return points


def accuracy_vs_tokens(rows: Sequence[dict[str, Any]], metric: str) -> Figure:
    """Accuracy against visual tokens kept per image (mean), one line per method."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    axis = fig.add_subplot()
    for method, points in _method_points(rows, "visual_tokens_mean").items():
        xs, ys, _ = zip(*sorted(points))
        full = {"marker": "*", "markersize": 12, "linestyle": "none", "color": "black"}
        style = full if method == FULL_METHOD else {"marker": "o"}
        axis.plot(xs, ys, label=method, **style)
    return _finish(fig, axis, rows, "visual tokens kept per image (mean)", metric, "Accuracy vs visual tokens kept")


def pareto(points: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both throughput (x) and accuracy (y), by x."""
    ordered = sorted(points, key=lambda p: (-p[0], -p[1]))
    front, best = [], float("-inf")
    for point in ordered:
        if point[1] > best:
            front.append(point)
            best = point[1]
    return sorted(front)


def accuracy_vs_throughput(rows: Sequence[dict[str, Any]], metric: str) -> Figure:
    """Accuracy against images/s: each method's runs (labelled with their budget) joined along
    its frontier (runs of that method no other of its runs beats on both), full tokens and
    chance as lines."""
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    axis = fig.add_subplot()
    for method, points in _method_points(rows, "images_per_s").items():
        if method == FULL_METHOD:
            xs, ys, _ = zip(*points)
            axis.plot(xs, ys, marker="*", markersize=12, linestyle="none", color="black", label="full tokens")
            continue
        front = pareto(points)
        (line,) = axis.plot([p[0] for p in front], [p[1] for p in front], marker="o", label=method)
        others = [p for p in points if p not in front]
        if others:
            axis.plot([p[0] for p in others], [p[1] for p in others], "o", color=line.get_color(), alpha=0.35)
        for x, y, label in points:
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
    return _finish(fig, axis, rows, "images / s", metric, "Accuracy vs throughput: each method's frontier")
