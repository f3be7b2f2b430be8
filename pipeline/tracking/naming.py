"""Run names that say what ran: ``caption · hired 20% · testbed-llava-next``,
``evaluate vqa · divprune 10% · testbed-llava-next``.

MLflow's own names (``indecisive-hawk-245``) say nothing in a list of runs; these put the kind of
job, the method and budget, and the model's short name where the eye looks first. A name the
user gives (``--run-name``) always wins: callers use :func:`run_name` only when it is ``None``.
"""

from __future__ import annotations

from typing import Any

from hired_ops.budget import Budget

SEPARATOR = " · "


def budget_label(budget: Any) -> str | None:
    """``"0.2"`` -> ``"20%"``, ``"576"`` -> ``"576 tokens"``; ``None`` (a method that picks its own
    count) -> ``None``; text that is no budget is shown as given."""
    if budget is None or str(budget) in ("", "None"):
        return None
    try:
        return Budget.parse(str(budget)).label
    except ValueError:
        return str(budget)


def model_label(model: str | None) -> str | None:
    """The last part of a hub id or checkpoint path: ``hired/tiny-llava-next`` -> ``tiny-llava-next``."""
    if not model:
        return None
    return str(model).rstrip("/").rsplit("/", 1)[-1] or str(model)


def run_name(kind: str, method: str | None = None, budget: Any = None, model: str | None = None, *extra: str) -> str:
    """``kind · method budget · model · extra...``, leaving out the parts that are ``None``.

    ``kind`` may carry a qualifier (``"evaluate vqa"``); ``extra`` adds short parts such as a
    batch size (``"b4"``).
    """
    setting = " ".join(part for part in (method, budget_label(budget)) if part)
    return SEPARATOR.join(part for part in (kind, setting, model_label(model), *extra) if part)
