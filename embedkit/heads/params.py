"""Typed head parameters (issue 11, the head contract).

Each head declares its parameters once, as `PARAMS = {name: Param(kind, default, help, ...)}`; a
subclass extends its parent's (`PARAMS = {**Parent.PARAMS, ...}`). The constructor validates every
value with `Param.check`, `embedkit heads NAME` prints the table, and the CLI's `--param K=V` text
goes through `Param.parse`. A bad value is one line naming the head, the parameter and what it
accepts, e.g. `dfr: parameter C_grid=abc: expects comma-separated numbers > 0`.

Kinds: "int", "float", "bool", "str" (free text), "choice" (one of `choices`), "floats" / "ints"
(a tuple; one number or "a,b,c" on the CLI), "any" (checked by `check_fn` only, for values such as
IPG's pair matrices). `nullable` (default: the default is None) admits None ("none" or "null" on
the CLI, unless "none" is itself one of the choices). `low` / `high` bound numbers (inclusive unless
`open_low` / `open_high`); `extra` lists string values a numeric parameter also takes (e.g.
`batch_size="full"`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedkit.errors import EmbedkitError

KINDS = ("int", "float", "bool", "str", "choice", "floats", "ints", "any")
_NONE = ("none", "null")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class _Bad(Exception):
    """A value that does not fit; the caller turns it into the one-line EmbedkitError."""


@dataclass(frozen=True)
class Param:
    kind: str
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool | None = None
    extra: tuple = ()
    check_fn: Callable[[Any], Any] | None = field(default=None, compare=False)
    accepts_text: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Param kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("a choice Param needs choices")

    @property
    def is_nullable(self) -> bool:
        return self.default is None if self.nullable is None else bool(self.nullable)

    # -- what it accepts, in words ----------------------------------------------------------
    def _bounds(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {self.high:g}")
        return (" " + " and ".join(parts)) if parts else ""

    def accepts(self) -> str:
        if self.accepts_text:
            text = self.accepts_text
        elif self.kind == "int":
            text = "an integer" + self._bounds()
        elif self.kind == "float":
            text = "a number" + self._bounds()
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "text"
        elif self.kind == "choice":
            text = "one of " + ", ".join("none" if c is None else str(c) for c in self.choices)
        elif self.kind == "floats":
            text = "comma-separated numbers" + self._bounds()
        elif self.kind == "ints":
            text = "comma-separated integers" + self._bounds()
        else:
            text = "a value"
        if self.extra:
            text += " or " + " or ".join(map(str, self.extra))
        if self.is_nullable and not (self.kind == "choice" and None in self.choices):
            text += " or none"
        return text

    # -- parse and check --------------------------------------------------------------------
    def parse(self, text: str):
        """The value of CLI text (`--param K=TEXT`); raises _Bad when it does not parse."""
        t = str(text).strip()
        low = t.lower()
        if self.kind == "choice":
            for c in self.choices:  # a choice spelled "none" stays a choice
                if c is not None and str(c).lower() == low:
                    return c
            if low in _NONE and (None in self.choices or self.is_nullable):
                return None
            raise _Bad
        if low in _NONE and self.is_nullable:
            return None
        if t in self.extra:
            return t
        if self.kind == "str":
            return t
        if self.kind == "bool":
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise _Bad
        if self.kind in ("int", "float"):
            return self._number(t)
        if self.kind in ("floats", "ints"):
            items = [v for v in t.strip("[]()").replace(";", ",").split(",") if v.strip()]
            if not items:
                raise _Bad
            return tuple(self._number(v.strip(), self.kind[:-1]) for v in items)
        raise _Bad  # "any": no text form

    def _number(self, t: str, kind: str | None = None):
        kind = kind or self.kind
        try:
            v = float(t)
        except ValueError:
            raise _Bad from None
        if kind == "int":
            if not math.isfinite(v) or v != int(v):
                raise _Bad
            return int(v)
        return v

    def _in_bounds(self, v: float) -> bool:
        if isinstance(v, float) and math.isnan(v):
            return False
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.open_high else v > self.high):
            return False
        return True

    def _scalar(self, v, kind: str):
        if isinstance(v, (bool, np.bool_)):
            raise _Bad  # True is not the number 1 here
        if kind == "int":
            if isinstance(v, (int, np.integer)):
                v = int(v)
            elif isinstance(v, (float, np.floating)) and math.isfinite(v) and v == int(v):
                v = int(v)
            else:
                raise _Bad
        else:
            if not isinstance(v, (int, float, np.integer, np.floating)):
                raise _Bad
            v = float(v) if isinstance(v, (np.integer, np.floating)) else v
        if not self._in_bounds(v):
            raise _Bad
        return v

    def _value(self, value):
        """The checked value (strings of non-text kinds are parsed first); raises _Bad."""
        if value is None:
            if self.is_nullable or (self.kind == "choice" and None in self.choices):
                return None
            raise _Bad
        if isinstance(value, str) and self.kind not in ("str", "any"):
            if value in self.extra:
                return value
            parsed = self.parse(value)  # CLI text: parse, then check the value
            return parsed if parsed is None or self.kind == "choice" else self._value(parsed)
        if self.kind == "any":
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise _Bad
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise _Bad
            return value
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise _Bad
            return bool(value)
        if self.kind in ("int", "float"):
            return self._scalar(value, self.kind)
        # floats / ints: one number or a sequence of numbers (kept in its given container type,
        # so records of default values do not change shape)
        if isinstance(value, (list, tuple, np.ndarray)):
            if len(value) == 0:
                raise _Bad
            for v in value:
                self._scalar(v, self.kind[:-1])
            return value
        self._scalar(value, self.kind[:-1])
        return value

    def check(self, owner: str, name: str, value):
        """`value` checked (and parsed when it is CLI text); raises one-line EmbedkitError."""
        try:
            value = self._value(value)
            if self.check_fn is not None and value is not None:
                value = self.check_fn(value)
        except (_Bad, TypeError, ValueError, OverflowError):
            raise EmbedkitError(
                f"{owner}: parameter {name}={_show(value)}: expects {self.accepts()}"
            ) from None
        return value

    def default_text(self) -> str:
        return _show(self.default)


def _show(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ",".join(_show(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}"
    return str(v)


def check_params(owner: str, declared: dict[str, Param], given: dict) -> dict:
    """Every declared parameter's value in force (defaults overridden by `given`, each checked).
    An unknown name is one line listing the known names."""
    unknown = set(given) - set(declared)
    if unknown:
        raise EmbedkitError(
            f"{owner}: unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(declared)) or 'none'}"
        )
    out = {name: p.default for name, p in declared.items()}
    for name, value in given.items():
        out[name] = declared[name].check(owner, name, value)
    return out


def table(declared: dict[str, Param], preset: dict | None = None) -> list[dict]:
    """Rows {name, kind, default, accepts, help} for `embedkit heads NAME` (a preset's values shown
    as the defaults they are for that name)."""
    preset = preset or {}
    rows = []
    for name, p in declared.items():
        default = preset.get(name, p.default)
        rows.append(
            {
                "name": name,
                "kind": p.kind,
                "default": _show(default),
                "accepts": p.accepts(),
                "help": p.help + (" (set by this name)" if name in preset else ""),
            }
        )
    return rows
