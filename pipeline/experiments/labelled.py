"""A labelled evaluation set: manifest rows with their answers and the task that scores them."""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsspec.utils import infer_compression

from pipeline.data.rows import InputRow
from pipeline.data.sources import list_inputs

from .tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)


_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class LabelledSet:
    """A labelled manifest, ready to run: inputs with the task's prompts, and their labels.

    Attributes:
        manifest: where it was read from.
        task: the task that prompts and scores it.
        inputs: one per row, ``prompt`` set to the task's prompt for that row.
        labels: by row id, what the task's scorer reads (``question`` and ``answers`` /
            ``answer`` / ``choices``).
    """

    manifest: str
    task: TaskSpec
    inputs: tuple[InputRow, ...]
    labels: Mapping[str, Mapping[str, Any]]

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(f"labelled set {self.manifest!r} has no rows")
        missing = [row.id for row in self.inputs if row.id not in self.labels]
        if missing:
            raise ValueError(f"rows without labels: {missing[:5]}")


def _manifest_format(uri: str) -> str:
    """``"parquet"`` or ``"json"`` from the file name (JSON may be compressed, ``rows.jsonl.gz``)."""
    name = posixpath.basename(uri.split("?", 1)[0].rstrip("/")).lower()
    if infer_compression(name) is not None:
        name = posixpath.splitext(name)[0]
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(_JSON_SUFFIXES):
        return "json"
    raise ValueError(
        f"evaluation input {uri!r} is not a manifest: hired evaluate reads one Parquet or JSON lines "
        "file (.parquet, .jsonl) with columns image, question and answers (or choices and answer)"
    )


def _resolve_task(requested: str | None, named: set[str], uri: str) -> TaskSpec:
    if requested is not None:
        task = get_task(requested)
        if named and named != {task.name}:
            logger.warning("manifest %s names task(s) %s; evaluating as %r as asked", uri, sorted(named), task.name)
        return task
    if not named:
        raise ValueError(
            f"no task given and manifest {uri!r} has no 'task' column: pass --task "
            "(vqa, docvqa, chartqa, multiple_choice, pope or exact)"
        )
    if len(named) > 1:
        raise ValueError(f"manifest {uri!r} mixes tasks {sorted(named)}: pass --task, or split it by task")
    return get_task(named.pop())


def _label(row: InputRow) -> dict[str, Any]:
    """What the scorers read, with absent columns left out (the scorers test for presence)."""
    label: dict[str, Any] = {"id": row.id}
    for name in ("question", "answers", "answer", "choices"):
        value = getattr(row, name)
        if value is not None:
            label[name] = list(value) if isinstance(value, tuple) else value
    return label


def load_labelled_set(
    manifest: str,
    task: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    limit: int | None = None,
) -> LabelledSet:
    """Read a labelled manifest and check every row can be prompted and scored.

    Args:
        manifest: a ``.parquet`` or ``.jsonl`` file, local or any fsspec URL.
        task: a :data:`pipeline.experiments.tasks.TASKS` name; ``None`` takes the manifest's ``task`` column.
        storage_options: fsspec options for the manifest's filesystem.
        limit: the first this many rows only.

    Raises:
        ValueError: not a manifest, unknown or missing task, a row without a question or
            without the labels its task scores against (the message names the row).
    """
    _manifest_format(manifest)  # one manifest file, not a folder of unlabelled images
    inputs = list_inputs(manifest, dict(storage_options) if storage_options else None, limit=limit)
    spec = _resolve_task(task, {row.task for row in inputs if row.task}, manifest)
    labels: dict[str, dict[str, Any]] = {}
    prompted: list[InputRow] = []
    for row in inputs:
        label = _label(row)
        if not str(label.get("question") or "").strip():
            raise ValueError(f"manifest {manifest!r}, row {row.id!r}: no question")
        try:
            prompt = spec.build_prompt(label)
            # scoring an empty reply runs every check the real reply will meet: labels present,
            # the answer one of the choices, POPE labels yes or no
            spec.score("", label)
        except (KeyError, ValueError) as error:
            needs = "'choices' and 'answer'" if spec.name == "multiple_choice" else "'answers'"
            raise ValueError(
                f"manifest {manifest!r}, row {row.id!r} cannot be scored as task {spec.name!r} "
                f"(it needs {needs}): {error}"
            ) from None
        labels[row.id] = label
        prompted.append(dataclasses.replace(row, prompt=prompt))
    return LabelledSet(manifest, spec, tuple(prompted), labels)
