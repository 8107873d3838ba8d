"""SpecError, and pydantic's validation errors as one line per problem naming the key."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """A sweep or trial file is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at ``loc`` (a path of field names) inside ``model``."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        args = [get_args(a)[0] if get_origin(a) is Annotated else a  # a tagged union's branch
                for a in (field.annotation, *get_args(field.annotation))]
        sub = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sub:
            return []
        model = sub[0]
    return list(model.model_fields)


# pydantic's union-branch tags in an error path ("constrained-float", "dict[...]",
# "function-after[...]") and its "[key]" marker: not keys the user wrote
_TAG = re.compile(r"^(constrained-)?(float|int|str|bool)$|^[a-z-]+\[.*\]$|^\[key\]$", re.S)
_KEY_SHOWN = 40  # a longer key is cut in messages


def _show_key(key: Any) -> str:
    """A key the user wrote, for a one-line message: repr'd (escapes newlines), cut if long."""
    text = repr(key)
    return text if len(text) <= _KEY_SHOWN else text[: _KEY_SHOWN - 4] + "...'"


def _unknown_key(loc: tuple[Any, ...], bad: Any, root: type[BaseModel]) -> str:
    parent = tuple(p for p in loc if isinstance(p, str))
    allowed = _allowed_keys(root, parent)
    hint = difflib.get_close_matches(bad, allowed, n=1) if isinstance(bad, str) else []
    msg = f"unknown key {_show_key(bad)}"
    if not isinstance(bad, str):
        msg += " (keys are names, not numbers or null)"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    msg += f"; allowed: {', '.join(allowed)}"
    return f"{'.'.join(parent) or '<top>'}: {msg}"


def format_errors(err: ValidationError, root: type[BaseModel]) -> list[str]:
    lines: list[str] = []
    branch: list[bool] = []  # the line is one branch of a union key (a number or a map)
    for e in err.errors():
        tagged = any(isinstance(p, str) and _TAG.match(p) for p in e["loc"])
        if e["type"] in ("extra_forbidden", "invalid_key"):  # the last part is the user's key
            *parent, bad = e["loc"]
            loc = tuple(p for p in parent if not (isinstance(p, str) and _TAG.match(p)))
            lines.append(_unknown_key(loc, e["input"] if e["type"] == "invalid_key" else bad, root))
            branch.append(False)
            continue
        parts = tuple(e["loc"])  # () for an error of the whole file (a key that is not text)
        loc = tuple(str(p) if nxt == "[key]" else p  # a map's key, even 1, is not a list index
                    for p, nxt in zip(parts, (*parts[1:], None)[:len(parts)], strict=True)
                    if not (isinstance(p, str) and _TAG.match(p)))
        key = ".".join(str(p) for p in loc if not isinstance(p, int))
        idx = [p for p in loc if isinstance(p, int)]
        where = key + (f"[{idx[0]}]" if idx else "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "too_short" and idx == []:
            msg = "must not be empty (a sweep axis needs at least one value)"
        value = e.get("input")
        shown = f" (got {value!r})" if not isinstance(value, dict | list) and e["type"] != "missing" else ""
        lines.append(f"{where or '<top>'}: {msg}{shown}")
        branch.append(tagged)
    # a union key with a deeper error (a bad map entry) needs no "not a number" line too,
    # and a value that fits no branch gets one line (the first branch's), not one per branch
    # (an unknown-key line names its section, not a value: it always stays)
    keys = [line.split(":", 1)[0] for line in lines]
    kept, seen = [], set()
    for ln, k, tagged in zip(lines, keys, branch, strict=True):
        if ": unknown key " not in ln:
            if any(o.startswith((k + ".", k + "[")) for o in keys) or (tagged and k in seen):
                continue
            seen.add(k)
        kept.append(ln)
    return list(dict.fromkeys(kept))


# The grid a sweep file may describe before expansion (product of its axes x seeds): a
# larger one is rejected outright (split the sweep). ``launch`` asks for --yes above
