"""Typed configs as plain data, shared by every sub-package (standard library only).

Configs here are frozen dataclasses that validate themselves and nest (a job config holds a
``DropConfig``; it does not copy its fields). Two things they all need from outside:

* :func:`from_mapping`: build one from plain data (a Serve config YAML's ``args``, a saved
  ``config.json``), nested mappings becoming nested configs, unknown keys an error;
* :func:`flat_params`: flatten one into MLflow params under the names runs have always used
  (``method``, ``budget``, ``alpha``, ``vision.size``, ...), so ``hired compare`` lines old and
  new runs up.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def is_config(value: Any) -> bool:
    """A nested config (its fields are settings of their own), as opposed to a dataclass value
    users write as text (a ``Budget``: it has ``parse``)."""
    return dataclasses.is_dataclass(value) and not hasattr(value, "parse")


def nested_config_type(hint: Any) -> type | None:
    """The dataclass a field's type hint names (``X`` or ``X | None``), else ``None``."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def from_mapping(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """``cls(**data)`` with nested mappings built into their configs; unknown keys are refused
    with the valid ones named (a typo in a YAML file must not be silently ignored)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__} must be a mapping of its fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s) {unknown}{f' in {where}' if where else ''}; "
            f"valid fields: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        inner = nested_config_type(hints[name])
        if inner is not None and isinstance(value, Mapping):
            value = from_mapping(inner, value, f"{where}.{name}" if where else name)
        values[name] = value
    return cls(**values)


def flat_params(config: Any, inline: frozenset[str] = frozenset(), prefix: str = "") -> dict[str, Any]:
    """``config`` as flat ``{name: value}`` MLflow params.

    Nested configs named in ``inline`` lend their fields at the top level (their own
    ``to_params()`` when they have one); other nested configs are prefixed (``vision.size``).
    Values that are not plain JSON types (a ``Budget``) become their ``str``.
    """
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if is_config(value):
            if field.name in inline:
                nested = value.to_params() if hasattr(value, "to_params") else flat_params(value)
                flat.update({f"{prefix}{k}": v for k, v in nested.items() if f"{prefix}{k}" not in flat})
            else:
                flat.update(flat_params(value, prefix=f"{prefix}{field.name}."))
        else:
            flat[f"{prefix}{field.name}"] = value if _plain(value) else str(value)
    return flat


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(_plain(v) for v in value.values())
    return value is None or isinstance(value, (str, int, float, bool))
