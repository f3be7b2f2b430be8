"""The settings of a sweep (methods x budgets) and the CSV text of a report, shared by evaluation and benchmarking."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hired_ops import BUDGETED, Budget, DropConfig, parse_method

logger = logging.getLogger(__name__)


_METHOD_LABELS = {
    "hired": "HiRED",
    "full": "Full",
    "spatial": "Spatial",
    "random": "Random",
    "prumerge": "PruMerge",
    "prumerge+": "PruMerge+",
    "visionzip": "VisionZip",
    "divprune": "DivPrune",
    "scope": "SCOPE-like",
}


# file names of a sweep report, in its output folder and as MLflow artifacts
TABLE_CSV = "table.csv"
TABLE_MARKDOWN = "table.md"


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a method and, for the budgeted methods, its budget.

    ``budget`` is kept as the user wrote it after normalisation by :meth:`Budget.parse`
    (``"0.2"`` a fraction of the model's maximum, ``"576"`` tokens); it is ``None`` for methods
    that choose their own count.
    """

    method: str
    budget: str | None = None

    def __post_init__(self) -> None:
        parse_method(self.method)  # a preset or "allocation+selection"; the error lists them
        if self.method in BUDGETED:
            if self.budget is None:
                raise ValueError(f"method {self.method!r} needs a budget (e.g. 0.2 or 576)")
            object.__setattr__(self, "budget", str(Budget.parse(self.budget)))
        elif self.budget is not None:
            raise ValueError(f"method {self.method!r} chooses its own token count: give it no budget")

    def apply(self, drop: DropConfig) -> DropConfig:
        """``drop`` with this setting's method and budget, its other fields kept."""
        return dataclasses.replace(drop, method=self.method, budget=self.budget)

    @property
    def name(self) -> str:
        """Folder and run name: ``hired-0.2``, ``spatial-576``, ``full``."""
        return self.method if self.budget is None else f"{self.method}-{self.budget}"

    @property
    def label(self) -> str:
        """Row label as the paper writes it: ``HiRED 20%``, ``Spatial 576 tokens``, ``Full``."""
        method = _METHOD_LABELS.get(self.method, self.method)  # "hired+divprune" reads as itself
        if self.budget is None:
            return method
        return f"{method} {Budget.parse(self.budget).label}"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV of report rows (a header from the first row's keys), as one string."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def sweep(methods: Sequence[str], budgets: Sequence[str]) -> tuple[Setting, ...]:
    """The settings of a methods x budgets sweep, in the order given, without repeats.

    Budgeted methods get one setting per budget; the others one setting in all, since a budget
    does not change them (a sweep of ``hired,full`` over ``0.2,0.4`` is three settings).
    """
    if not methods:
        raise ValueError("a sweep needs at least one method")
    if not budgets and any(method in BUDGETED for method in methods):
        raise ValueError(f"methods {sorted(set(methods) & BUDGETED)} need at least one budget")
    settings: list[Setting] = []
    for method in methods:
        if method in BUDGETED:
            settings.extend(Setting(method, budget) for budget in budgets)
        else:
            settings.append(Setting(method))
    return tuple(dict.fromkeys(settings))
