"""``hired compare``: job runs side by side, as a table, a CSV and plots against the budget.

Which runs: ``--run-ids`` (in the order given), or every FINISHED job run of ``--experiment``
(a job run is one with a ``method`` param; earlier ``compare`` runs are left out). The table is
printed, written to ``<output>/compare.csv``, and plotted:

* ``throughput_vs_budget.png``: images/s and generated tokens/s against the budget, one line per
  method;
* ``accuracy_vs_tokens.png``: the headline accuracy against the visual tokens kept, and
  ``accuracy_vs_throughput.png``: against images/s, each method's frontier; both with the
  full-token accuracy and chance as lines (only when some run has an accuracy metric; see
  :mod:`pipeline.tracking.frontier`).

The files are also logged to a new run named ``compare`` in the experiment (``--no-log`` skips it).

**Budgets and units.** The ``budget`` param is kept as the user gave it: ``"0.2"`` is a fraction of
the model's maximum visual tokens, ``"576"`` a token count (parsed with
:meth:`hired_ops.budget.Budget.parse`). When every run's budget is in the same unit it is the x
axis as is. When units are mixed, or some budget is not a number (methods that choose their own
count, like PruMerge), no conversion is guessed: every run is placed at the visual tokens it
actually kept on average (metric ``visual_tokens_mean``), which is comparable across all of them.
The CSV records the x value used (``budget_x``) and its unit (``budget_unit``).

**Datasets.** Each run's dataset (name and digest of its MLflow dataset input; runs logged before
datasets were recorded give their ``dataset`` param and no digest) is in the CSV. Runs over
different datasets are not silently mixed: the plots' titles and the printout say so.

**Chance** is the run's ``chance`` metric (evaluation runs log it), else its task's fixed chance
(:func:`pipeline.experiments.tasks.chance_level`).

**Accuracy.** The run's ``task`` param names its headline metric (see :data:`pipeline.experiments.tasks.TASKS`,
e.g. ``vqa_accuracy``, ``anls``); without one, the first of ``accuracy`` and the tasks' metric
names that the run has, else any metric ending in ``accuracy``. ``accuracy_metric`` in the CSV
says which it was.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from hired_ops.budget import Budget
from pipeline.experiments.tasks import TASKS
from pipeline.tracking.frontier import (
    accuracy_vs_throughput,
    accuracy_vs_tokens,
    mixed_datasets_warning,
)
from pipeline.tracking.runs import (
    DEFAULT_EXPERIMENT,
    KIND_TAG,
    TrackingConfig,
    open_client,
    start_job_run,
)

if TYPE_CHECKING:
    # MLflow itself is only imported through pipeline.tracking.runs, which sets it up first
    from mlflow import MlflowClient
    from mlflow.entities import Run

# Printed, in this order; the CSV adds DETAIL_COLUMNS after them.
COLUMNS = (
    "run_id",
    "run_name",
    "model",
    "method",
    "budget",
    "accuracy",
    "images_per_s",
    "generated_tokens_per_s",
    "ttft_p50_s",
    "peak_accel_mem_mb",
    "peak_host_mem_mb",
)
DETAIL_COLUMNS = (
    "accuracy_metric",
    "chance",
    "dataset",
    "dataset_digest",
    "budget_x",
    "budget_unit",
    "visual_tokens_mean",
    "ttft_p95_s",
    "latency_p50_s",
    "images",
    "errors",
    "status",
    "experiment_id",
)
# Metrics copied into the row under the same name.
_METRIC_COLUMNS = (
    "images_per_s",
    "generated_tokens_per_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "latency_p50_s",
    "visual_tokens_mean",
    "images",
    "errors",
)
HEADLINE_METRICS = ("accuracy", *dict.fromkeys(spec.metric for spec in TASKS.values()))
COMPARE_KIND = "compare"
CSV_NAME = "compare.csv"
ACCURACY_PLOT = "accuracy_vs_tokens.png"
FRONTIER_PLOT = "accuracy_vs_throughput.png"
THROUGHPUT_PLOT = "throughput_vs_budget.png"
_SHORT_ID = 8
_UNIT_LABELS = {
    "fraction": "budget (fraction of the model's maximum visual tokens)",
    "tokens": "budget (visual tokens)",
    "kept": "visual tokens kept per image (mean; budgets in mixed units)",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hired compare``."""
    parser = subparsers.add_parser(
        "compare",
        help="put job runs side by side: table, CSV and plots against the budget",
        description=__doc__.split("\n\n")[0],
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--experiment", help=f"compare every finished job run of this experiment (default: {DEFAULT_EXPERIMENT})"
    )
    which.add_argument("--run-ids", nargs="+", metavar="RUN_ID", help="compare these runs, in this order")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument(
        "--order-by",
        choices=COLUMNS,
        help="sort the runs by this column, missing values last (default: the --run-ids order, "
        "else by method, then budget)",
    )
    parser.add_argument("--descending", action="store_true", help="sort --order-by from largest to smallest")
    parser.add_argument(
        "--output", type=Path, default=Path("hired-compare"), help="folder for compare.csv and the plots"
    )
    parser.add_argument("--no-log", action="store_true", help="do not log the comparison as an MLflow run")
    return parser


def run(args: argparse.Namespace) -> int:
    """Fetch the runs, print and write the table, draw the plots, log them."""
    config = TrackingConfig(
        tracking_uri=args.tracking_uri,
        experiment=args.experiment or DEFAULT_EXPERIMENT,
        run_name=COMPARE_KIND,
        tags={KIND_TAG: COMPARE_KIND},
        log_system_metrics=False,
    )
    client = open_client(config, must_exist=True)
    if args.run_ids:
        runs = _runs_by_id(client, args.run_ids, config.tracking_uri)
        experiment_name = client.get_experiment(runs[0].info.experiment_id).name
    else:
        runs = _runs_of_experiment(client, config.experiment, config.tracking_uri)
        experiment_name = config.experiment
    rows = [run_row(r) for r in runs]
    x_unit = add_budget_axis(rows)
    rows = order_rows(rows, args.order_by, args.descending, keep_given_order=bool(args.run_ids))

    print(format_table(rows))
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    written = [write_csv(rows, output / CSV_NAME)]
    throughput = plot_vs_budget(
        rows,
        x_unit,
        [("images_per_s", "images / s"), ("generated_tokens_per_s", "generated tokens / s")],
        "Throughput vs budget",
    )
    written.append(_save(throughput, output / THROUGHPUT_PLOT))
    if any(row["accuracy"] is not None for row in rows):
        metric = " / ".join(sorted({row["accuracy_metric"] for row in rows if row["accuracy_metric"]}))
        written.append(_save(accuracy_vs_tokens(rows, metric), output / ACCURACY_PLOT))
        written.append(_save(accuracy_vs_throughput(rows, metric), output / FRONTIER_PLOT))
    else:
        print(f"note: no run has an accuracy metric; {ACCURACY_PLOT} and {FRONTIER_PLOT} not drawn")
    warning = mixed_datasets_warning(rows)
    if warning:
        print(warning)
    for path in written:
        print(f"wrote {path}")

    if not args.no_log:
        log_config = dataclasses.replace(config, experiment=experiment_name)
        params = {"runs": len(rows), "source": "run_ids" if args.run_ids else "experiment", "order_by": args.order_by}
        with start_job_run(log_config, params) as compare_run:
            for path in written:
                compare_run.log_artifact(path)
        print(f"logged as run {compare_run.run_id} in experiment {experiment_name!r}")
    return 0


def _runs_by_id(client: MlflowClient, run_ids: Sequence[str], uri: str) -> list[Run]:
    """The runs, in the order given (repeats dropped)."""
    from mlflow.exceptions import (
        MlflowException,  # here, not at the top: open_client sets MLflow up first
    )

    runs = []
    for run_id in dict.fromkeys(run_ids):
        try:
            runs.append(client.get_run(run_id))
        except MlflowException as error:
            raise ValueError(f"run {run_id!r} not found at {uri}: {error.message}") from error
    return runs


def _runs_of_experiment(client: MlflowClient, name: str, uri: str) -> list[Run]:
    """FINISHED job runs of an experiment, oldest first; compare runs and non-job runs left out."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(
            f"experiment {name!r} not found at {uri}; experiments there: {', '.join(map(repr, names)) or 'none'}"
        )
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    jobs = [r for r in runs if r.data.tags.get(KIND_TAG) != COMPARE_KIND and "method" in r.data.params]
    if not jobs:
        raise ValueError(f"experiment {name!r} at {uri} has no finished job runs (runs with a 'method' param)")
    return jobs


def headline_accuracy(params: dict[str, str], metrics: dict[str, float]) -> tuple[str, float] | None:
    """``(metric name, value)`` of a run's accuracy, or ``None`` if it has none (see module doc)."""
    task = TASKS.get(params.get("task", ""))
    if task is not None and task.metric in metrics:
        return task.metric, metrics[task.metric]
    for name in HEADLINE_METRICS:
        if name in metrics:
            return name, metrics[name]
    for name in sorted(metrics):
        if name.endswith("accuracy"):
            return name, metrics[name]
    return None


def run_row(run: Run) -> dict[str, Any]:
    """One table row from an MLflow run."""
    params, metrics = run.data.params, run.data.metrics
    accuracy = headline_accuracy(params, metrics)
    task = TASKS.get(params.get("task", ""))
    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    dataset = inputs[0].dataset if inputs else None
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "model": params.get("model"),
        "method": params.get("method"),
        "budget": params.get("budget"),
        "accuracy": accuracy[1] if accuracy else None,
        "accuracy_metric": accuracy[0] if accuracy else None,
        "peak_accel_mem_mb": metrics.get("peak_accel_mem_mb_max"),
        "peak_host_mem_mb": metrics.get("peak_host_mem_mb_max"),
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "chance": metrics.get("chance", task.chance if task is not None else None),
        # older runs name their data only in the dataset param
        "dataset": dataset.name if dataset is not None else params.get("dataset"),
        "dataset_digest": dataset.digest if dataset is not None else None,
    }
    row.update({name: metrics.get(name) for name in _METRIC_COLUMNS})
    return row


def _parse_budget(text: str | None) -> Budget | None:
    try:
        return Budget.parse(text) if text is not None else None
    except ValueError:
        return None


def add_budget_axis(rows: list[dict[str, Any]]) -> str:
    """Set each row's ``budget_x`` and ``budget_unit``; return the unit shared by all rows.

    The unit is ``"fraction"`` or ``"tokens"`` when every budget parses in that unit, else
    ``"kept"``: the measured ``visual_tokens_mean`` (see the module doc).
    """
    budgets = [_parse_budget(row["budget"]) for row in rows]
    units = {"tokens" if b.tokens is not None else "fraction" for b in budgets if b is not None}
    unit = units.pop() if len(units) == 1 and None not in budgets else "kept"
    for row, budget in zip(rows, budgets):
        if unit == "kept":
            row["budget_x"] = row["visual_tokens_mean"]
        else:
            row["budget_x"] = float(budget.tokens if unit == "tokens" else budget.fraction)
        row["budget_unit"] = unit
    return unit


def _sorted(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    """Stable sort on one column, missing values last in either direction."""
    present = [row for row in rows if row[column] is not None]
    missing = [row for row in rows if row[column] is None]
    return sorted(present, key=lambda row: row[column], reverse=descending) + missing


def order_rows(
    rows: list[dict[str, Any]], order_by: str | None, descending: bool, keep_given_order: bool
) -> list[dict[str, Any]]:
    """Rows in the requested order. ``budget`` sorts by its numeric x value, not as text."""
    if order_by is None:
        if keep_given_order:
            return list(rows)
        return _sorted(_sorted(rows, "budget_x", descending), "method", descending)
    return _sorted(rows, "budget_x" if order_by == "budget" else order_by, descending)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "run_id":
        return str(value)[:_SHORT_ID]
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The printed table: :data:`COLUMNS`, aligned, ``-`` where a run lacks a value."""
    cells = [list(COLUMNS)] + [[_cell(c, row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """All columns, full run ids, empty cells for missing values."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, *DETAIL_COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_vs_budget(rows: Sequence[dict[str, Any]], unit: str, panels: Sequence[tuple[str, str]], title: str) -> Figure:
    """One panel per ``(column, y label)``, one line per method over ``budget_x``."""
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    methods = list(dict.fromkeys(str(row["method"]) for row in rows))
    for axis, (column, label) in zip(axes, panels):
        for method in methods:
            points = sorted(
                (row["budget_x"], row[column])
                for row in rows
                if str(row["method"]) == method and row["budget_x"] is not None and row[column] is not None
            )
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", label=method)
        axis.set_xlabel(_UNIT_LABELS[unit])
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(title="method")
    fig.suptitle(title)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path
