"""Command-line flags generated from dataclasses, so flags and documentation never drift.

Each command declares its options as a dataclass whose fields carry a docstring (the
line under the field); :func:`add_arguments` turns every field into ``--field-name``
with that docstring as help, and :func:`from_namespace` builds the dataclass back from
parsed arguments. The same habit as EleutherAI sparsify's config-generated CLI.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import types
import typing
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass and its bases, read from source.

    Returns:
        ``{field name: docstring with whitespace collapsed}``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _flag(f: dataclasses.Field) -> str:
    """``--field-name``, or ``--<metadata["flag"]>`` where the field names a shorter flag."""
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, int_type: Any = int) -> None:
    """Add one flag per field of the dataclass ``cls``.

    A field without a default becomes a required flag; ``bool`` fields become
    ``--flag/--no-flag``; ``list[int]`` fields take one or more values, a fixed-length
    ``tuple[float, float]`` exactly that many; ``int`` fields are parsed by ``int_type``
    (e.g. a parser of ``20M``); ``X | None`` fields take X. A field's
    ``metadata["flag"]`` names a shorter flag (``--hook`` for ``hook_name``), its
    ``metadata["metavar"]`` the values' names in the help.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (
            None
            if required
            else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        )
        text = docs.get(f.name, "") + (
            "" if required or default is None else f" (default: {default})"
        )
        kw: dict[str, Any] = {"dest": f.name, "help": text.replace("%", "%%")}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) in (list, tuple):
            items = typing.get_args(kind)
            fixed = typing.get_origin(kind) is tuple and Ellipsis not in items
            kw.update(
                type=int_type if items[0] is int else items[0], nargs=len(items) if fixed else "+"
            )
        elif kind is int:
            kw["type"] = int_type
        else:
            kw["type"] = kind
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        if required:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(_flag(f), **kw)


def from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass ``cls`` built from the parsed arguments that name its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
