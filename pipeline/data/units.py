"""An input split into read units: what the driver plans, and what each read task reads.

The driver only lists files and reads Parquet footers (:func:`plan_inputs`); the rows, and any
inline image bytes, are read by :func:`read_unit` on the workers. Row ids are the ones
:func:`pipeline.data.sources.list_inputs` gives: a unit knows its rows' positions, so ids made
from positions (``rows.parquet:row 17``) need no global pass, and only inputs whose ids can repeat
(manifests naming ids or paths) take one pass over the ids (:func:`repeated_ids`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from fsspec.spec import AbstractFileSystem

from .manifests import PATH_COLUMNS, open_parquet, parquet_columns, read_manifest
from .rows import InputError, InputRow
from .shards import expand_braces, has_braces, is_shard_path, read_shard
from .sources import list_inputs, open_input, repeated_id_renames
from .storage import (
    GLOB_CHARS,
    Locator,
    filesystem,
    is_hidden,
    is_image_path,
    manifest_kind,
    relative_to,
)

# rows a unit of listed images or a slice of a Parquet manifest holds: one read task's work
ROWS_PER_UNIT = 256


@dataclass(frozen=True)
class ReadUnit:
    """One read task's share of the input.

    Attributes:
        kind: ``rows`` (listed images or caller-given rows), ``parquet``, ``json`` or ``tar``.
        source: the manifest or shard as users name it (messages; manifest-relative ids).
        path: its filesystem path.
        base: the folder relative image paths in a manifest resolve against.
        id_root: ids of manifest paths are relative to it.
        row_groups, first_row: the Parquet row groups this unit reads and the file row they start at.
        rows: the rows themselves, for ``rows`` units.
        count: rows the unit yields, when known without reading it.
    """

    kind: Literal["rows", "parquet", "json", "tar"]
    source: str = ""
    path: str = ""
    base: str = ""
    id_root: str | None = None
    row_groups: tuple[int, ...] = ()
    first_row: int = 0
    rows: tuple[InputRow, ...] = ()
    count: int | None = None


@dataclass(frozen=True)
class InputPlan:
    """The read units of one input and whether its ids need a pass to make them unique."""

    uri: str
    units: tuple[ReadUnit, ...]
    may_repeat: bool = False

    @property
    def total(self) -> int | None:
        """Rows the input holds, when every unit knows its count."""
        counts = [unit.count for unit in self.units]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]


def plan_rows(uri: str, rows: list[InputRow]) -> InputPlan:
    """A plan over rows the caller already holds (ids already unique)."""
    chunks = [tuple(rows[i : i + ROWS_PER_UNIT]) for i in range(0, len(rows), ROWS_PER_UNIT)]
    return InputPlan(uri, tuple(ReadUnit("rows", rows=chunk, count=len(chunk)) for chunk in chunks))


def plan_inputs(uri: str, storage_options: dict | None = None) -> InputPlan:
    """Split ``uri`` (every form :func:`list_inputs` takes, plus WebDataset ``.tar`` shards: one
    shard, a folder or glob of them, or a brace pattern ``shards-{0000..0099}.tar``) into units.

    Raises:
        InputError: what :func:`list_inputs` raises for a bad input, a manifest without an image
            column or rows, and a missing shard.
    """
    fs, stripped, locate, is_http = open_input(uri, storage_options)
    if not is_http and has_braces(stripped) and not fs.exists(stripped):
        files = expand_braces(stripped)
        missing = [f for f in files if not fs.exists(f)]
        if missing:
            raise InputError(uri, f"{len(missing)} of {len(files)} files the pattern names do not exist "
                             f"(first: {locate(missing[0])})", "check the pattern's numbers and the folder")
        return _plan_files(uri, fs, locate, files, _fixed_root(stripped, "{"))
    if not is_http and any(ch in stripped for ch in GLOB_CHARS) and not fs.exists(stripped):
        matched = fs.glob(stripped, detail=True)
        root = _fixed_root(stripped, *GLOB_CHARS)
        files = sorted(p for p, info in matched.items() if info.get("type") != "directory")
        files = [p for p in files if not is_hidden(relative_to(p, root))]
        if files and all(is_shard_path(p) or manifest_kind(p) for p in files):
            return _plan_files(uri, fs, locate, files, root)
    elif not is_http and fs.isdir(stripped):
        found = [p for p in sorted(fs.find(stripped)) if not is_hidden(relative_to(p, stripped))]
        shards = [p for p in found if is_shard_path(p)]
        if shards and not any(is_image_path(p) for p in found):
            return _plan_files(uri, fs, locate, shards, stripped)
    elif manifest_kind(stripped) or is_shard_path(stripped):
        parent = stripped if is_http else posixpath.dirname(stripped.rstrip("/"))
        return _plan_files(uri, fs, locate, [stripped], parent, single=True)
    # images (a folder, glob or file): listing them is the input's only metadata, as in Ray's
    # own file readers; the bytes are read by the decode tasks
    return plan_rows(uri, list_inputs(uri, storage_options))


def _fixed_root(pattern: str, *special: str) -> str:
    """The folder before the first path component holding any of ``special``."""
    fixed: list[str] = []
    for part in pattern.split("/")[:-1]:
        if any(ch in part for ch in special):
            break
        fixed.append(part)
    return "/".join(fixed)


def _plan_files(
    uri: str, fs: AbstractFileSystem, locate: Locator, files: list[str], root: str, single: bool = False
) -> InputPlan:
    """Units of manifests and shards; ids relative to ``root`` as :func:`list_inputs` makes them."""
    units: list[ReadUnit] = []
    may_repeat = len(files) > 1 and not all(is_shard_path(f) for f in files)
    for path in files:
        source = uri if single else locate(path)
        if is_shard_path(path):
            shard_id = posixpath.basename(path) if single else relative_to(path, root)
            units.append(ReadUnit("tar", source=source, path=path, base=shard_id))
            continue
        base = root if single else posixpath.dirname(path)
        id_root = None if single else root
        if manifest_kind(path) == "parquet":
            parquet_units, repeats = _parquet_units(source, fs, path, base, id_root)
            units += parquet_units
        else:
            first = next(iter(read_manifest(source, fs, path, "json", locate, base, 1, id_root=id_root)), None)
            repeats = first is not None and not _positional(first)
            units.append(ReadUnit("json", source=source, path=path, base=base, id_root=id_root, count=None if first else 0))
        may_repeat = may_repeat or repeats
    if all(unit.count == 0 for unit in units):
        raise InputError(uri, "the manifest has no rows" if single else f"the {len(files)} matching manifests have no rows",
                         "check that the file is the one you meant")
    return InputPlan(uri, tuple(u for u in units if u.count != 0), may_repeat)


def _positional(row: InputRow) -> bool:
    """Whether a manifest row's id came from its position (unique by construction)."""
    return "#row=" in row.path or "#line=" in row.path or "#item=" in row.path


def _parquet_units(
    source: str, fs: AbstractFileSystem, path: str, base: str, id_root: str | None
) -> tuple[list[ReadUnit], bool]:
    """Slices of whole row groups of about :data:`ROWS_PER_UNIT` rows, from the footer alone."""
    with fs.open(path, "rb") as handle:
        parquet = open_parquet(source, handle)
        columns = parquet_columns(source, parquet.schema_arrow.names)
        metadata = parquet.metadata
    units: list[ReadUnit] = []
    groups: list[int] = []
    first = start = 0
    for group in range(metadata.num_row_groups):
        groups.append(group)
        first += metadata.row_group(group).num_rows
        if first - start >= ROWS_PER_UNIT or group == metadata.num_row_groups - 1:
            units.append(ReadUnit("parquet", source, path, base, id_root, tuple(groups), start, count=first - start))
            groups, start = [], first
    # ids from an id column or paths can repeat; a manifest of inline bytes only numbers its rows
    return units or [ReadUnit("parquet", source, path, count=0)], any(c == "id" or c in PATH_COLUMNS for c in columns)


def read_unit(uri: str, unit: ReadUnit, storage_options: dict | None = None) -> Iterator[InputRow]:
    """The rows of one unit of the plan of ``uri``, in order (run inside a read task)."""
    if unit.kind == "rows":
        yield from unit.rows
        return
    fs, _, protocol = filesystem(uri, storage_options)
    locate = Locator(fs, protocol, uri)
    if unit.kind == "tar":
        yield from read_shard(unit.source, fs, unit.path, unit.base, locate(unit.path))
        return
    yield from read_manifest(
        unit.source, fs, unit.path, unit.kind, locate, unit.base, None, id_root=unit.id_root,
        row_groups=unit.row_groups or None, first_row=unit.first_row,
    )


def repeated_ids(plan: InputPlan, storage_options: dict | None = None) -> dict[tuple[int, int], str]:
    """``{(unit index, position in unit): new id}`` for repeated ids, as :func:`list_inputs`
    renames them; empty when the plan's ids cannot repeat. Reads every row: run it on a worker."""
    if not plan.may_repeat:
        return {}
    where: list[tuple[int, int]] = []
    ids: list[str] = []
    for index, unit in enumerate(plan.units):
        for position, row in enumerate(read_unit(plan.uri, unit, storage_options)):
            where.append((index, position))
            ids.append(row.id)
    return {where[flat]: new for flat, new in repeated_id_renames(ids).items()}
