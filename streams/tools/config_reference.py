"""The configuration reference (docs/configuration.md), generated from the settings models, so it cannot drift.

Every key: its path in pipeline_config.yaml, its type, its default, its environment variable
(`TICKFLOW_<SECTION>__<KEY>`) and its meaning, taken from the field's `description` or else from the comment
lines right above the field in the model's source (streams/config.py keeps its documentation as comments).

    python -m streams.tools.config_reference > docs/configuration.md

tests/unit/streams/tools/test_config_reference.py fails when the committed file differs from a fresh run.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from functools import cache
from typing import Any, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from streams.config import key_env_by_source
from streams.settings import Settings

HEADER = """# Configuration reference

Generated from the settings models by `python -m streams.tools.config_reference > docs/configuration.md`;
do not edit by hand (a test compares it with a fresh generation).

Precedence, highest first: keyword arguments, environment variables (`TICKFLOW_<SECTION>__<KEY>`; nested
sections add `__<KEY>` again), the YAML file named by `TICKFLOW_CONFIG` (default `pipeline_config.yaml`),
the defaults below. Lists and mappings are given in the environment as JSON.
"""


@cache
def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment lines right above it in the class body (empty when the source is missing)."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines, _ = inspect.getsourcelines(cls)
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        body = source.splitlines()
        tree = ast.parse(source)
        for node in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                comment: list[str] = []
                i = node.lineno - 2
                while i >= 0 and body[i].strip().startswith("#"):
                    comment.insert(0, body[i].strip().lstrip("#").strip())
                    i -= 1
                if comment:
                    out[node.target.id] = " ".join(comment)
    return out


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp)).replace("typing.", "")
    args = get_args(tp)
    name = getattr(origin, "__name__", str(origin)).replace("typing.", "")
    if name in ("Union", "UnionType"):
        return " | ".join(_type_name(a) for a in args)
    if name == "Literal":
        return "one of " + " | ".join(repr(a) for a in args)
    if name == "Annotated":
        return _type_name(args[0])
    return f"{name}[{', '.join(_type_name(a) for a in args)}]"


_NO_DEFAULT = object()


def _default_value(field: Any) -> Any:
    """The field's default, or a marker string when it has none that can be shown."""
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        try:
            return field.default_factory()
        except TypeError:
            return _NO_DEFAULT
    return PydanticUndefined


def _default(field: Any) -> str:
    value = _default_value(field)
    if value is _NO_DEFAULT:
        return "(computed)"
    if value is PydanticUndefined:
        return "(required)"
    return _shown(value)


def _shown(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(secret, empty)" if not value.get_secret_value() else "(secret)"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value not in ("", None) else ("`\"\"`" if value == "" else "`None`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(model: type[BaseModel], path: tuple[str, ...] = (), defaults: BaseModel | None = None
         ) -> list[tuple[str, str, str, str, str]]:
    """(key path, type, default, environment variable, meaning) of every leaf setting, sections flattened. A
    section whose default is built with other values than its class's (the intraday bar checks) shows those:
    `defaults` is that built section."""
    out = []
    comments = _comments(model)
    for name, field in model.model_fields.items():
        key = (*path, name)
        tp = field.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel) and not issubclass(tp, SecretStr):
            built = getattr(defaults, name) if defaults is not None else _default_value(field)
            out.extend(rows(tp, key, built if isinstance(built, BaseModel) else None))
            continue
        meaning = field.description or comments.get(name, "")
        env = "TICKFLOW_" + "__".join(k.upper() for k in key)
        shown = _shown(getattr(defaults, name)) if defaults is not None else _default(field)
        out.append((".".join(key), _type_name(tp), shown, env, meaning))
    return out


def key_table() -> str:
    """The providers' key variables, from each source section's `key_env`: keys are never settings, so the
    tables above cannot show them."""
    lines = ["\nAPI keys are read from the environment only (or `.env`), never from a settings file; the first "
             "non-empty variable wins. Sources not listed need no key.\n",
             "\n| Source | Key environment variables |\n|---|---|\n"]
    for source, names in key_env_by_source().items():
        lines.append(f"| `{source}` | {', '.join(f'`{n}`' for n in names)} |\n")
    return "".join(lines)


def generate() -> str:
    """The whole Markdown reference: one table per top-level section."""
    parts = [HEADER]
    for section, field in Settings.model_fields.items():
        tp = field.annotation
        assert isinstance(tp, type) and issubclass(tp, BaseModel), section
        doc = inspect.cleandoc(tp.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        parts.append(f"\n## `{section}`\n")
        if doc and not doc.startswith(tp.__name__ + "("):
            parts.append(f"{doc}\n")
        parts.append("\n| Key | Type | Default | Environment | Meaning |\n|---|---|---|---|---|\n")
        for key, type_name, default, env, meaning in rows(tp, (section,)):
            parts.append(f"| `{key}` | {_cell(type_name)} | {_cell(default)} | `{env}` | {_cell(meaning)} |\n")
        if section == "sources":
            parts.append(key_table())
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(generate())
