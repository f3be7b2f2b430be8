"""Command-line flags generated from the typed configs, so each default is written once (in the
config) and ``--help`` shows it.

A config's fields become ``--kebab-case`` flags of the same name (or a given one); the type, the
default and the choices come from the dataclass, the help text from its docstring's
``Attributes:`` section. Parsed arguments go back through :func:`build`, which returns the
config, validated by its own constructor: library code never sees an ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from hired_ops import Budget
from pipeline.configs import is_config

_MISSING = dataclasses.MISSING


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` sections of ``cls``'s docstring and its bases'
    (Google style; a line may name several fields, ``a, b: ...``); a subclass's text wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    doc = cls.__dict__.get("__doc__") or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        match = re.match(r"^\s{4,8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if match and not line.startswith(" " * 12):
            names = [n.strip() for n in match.group(1).split(",")]
            for name in names:
                docs[name] = match.group(2).strip()
        elif line.strip() and names:
            for name in names:
                docs[name] += " " + line.strip()
        elif not line.strip() and docs:
            names = []
    return docs


def field_default(cls: type, name: str) -> Any:
    """The default of ``cls``'s field ``name`` (calling its factory), for flags whose shape
    differs from the field's."""
    return _default(next(f for f in dataclasses.fields(cls) if f.name == name))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return _MISSING


def _optional_number(kind: type):
    """A parser for ``int | None`` / ``float | None`` flags: ``none`` (any case) is ``None``."""

    def parse(text: str):
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _argument(hint: Any, default: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if optional and len(args) == 1 else hint
    if typing.get_origin(base) is Literal:
        return {"choices": list(typing.get_args(base))}
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base in (int, float):
        return {"type": _optional_number(base) if optional else base}
    if base is Budget or Budget in args:
        return {"type": str}  # Budget.parse runs in the config, with its own message
    if base is str and optional:
        return {"type": _optional_text}
    if typing.get_origin(base) is dict:
        return {"type": json.loads}  # e.g. --vision-resources '{"vision_gpu": 1}'
    if typing.get_origin(base) is tuple:
        return {"type": lambda text: tuple(item.strip() for item in text.split(",") if item.strip())}
    return {"type": str}


def _plain_text(doc: str) -> str:
    """Docstring markup as terminal text: ``x`` and :role:`x` become x; % is escaped for argparse."""
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "").replace("%", "%%")


def _optional_text(text: str) -> str | None:
    """A parser for ``str | None`` flags: ``none`` (any case) is ``None``."""
    return None if text.strip().lower() == "none" else text


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def add_config_arguments(
    group: argparse._ActionsContainer,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    prefix: str = "",
    flags: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of ``cls`` to ``group``.

    Args:
        only, skip: which fields (default: every init field without a nested config).
        prefix: flag and destination prefix (``vision-`` gives ``--vision-size`` / ``vision_size``).
        flags: field -> flag name where the flag is not the field's (``name`` -> ``model``).
        defaults: a different default for this command (e.g. a sweep's); shown in ``--help``.
        helps: help text where the docstring's is not the one to show.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    wanted = set(only) if only is not None else None
    for field in dataclasses.fields(cls):
        if not field.init or field.name in skip or (wanted is not None and field.name not in wanted):
            continue
        if wanted is None and is_config(_default(field)):
            continue
        name = (flags or {}).get(field.name, field.name)
        default = (defaults or {}).get(field.name, _default(field))
        if hasattr(default, "parse"):  # typed as text, parsed back by the config
            default = str(default)
        keywords = _argument(hints[field.name], default)
        text = _plain_text((helps or {}).get(field.name) or docs.get(field.name, ""))
        if default is not _MISSING and "(default:" not in text:
            shown = f"--{'' if default else 'no-'}{prefix}{name}" if "action" in keywords else _shown(default)
            text = f"{text} (default: {shown})".strip().replace("_", "-") if "action" in keywords else f"{text} (default: {shown})".strip()
        group.add_argument(
            f"--{prefix}{name}".replace("_", "-"),
            dest=f"{prefix}{name}".replace("-", "_"),
            default=default if default is not _MISSING else None,
            help=text,
            **keywords,
        )


def build(
    cls: type,
    args: argparse.Namespace,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    prefix: str = "",
    flags: Mapping[str, str] | None = None,
    **given: Any,
):
    """``cls`` from the flags :func:`add_config_arguments` added (same selection arguments),
    plus ``given`` fields (nested configs, positional inputs)."""
    wanted = set(only) if only is not None else None
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.name in skip or field.name in given:
            continue
        if wanted is not None and field.name not in wanted:
            continue
        dest = f"{prefix}{(flags or {}).get(field.name, field.name)}".replace("-", "_")
        if hasattr(args, dest):
            values[field.name] = getattr(args, dest)
    return cls(**values, **given)
