"""The audience rule language: who a campaign or a custom label is for, parsed and checked without
`eval`, and evaluated over whole columns (one numpy pass per clause, never a loop over users).

    lifecycle_stage in ("active", "sleeping") and not rfm_segment = "lost"
    monetary_90d > 1000 or (country = "DE" and platform != "web")
    did purchase in last 30 days and did not app_open in last 7 days
    recency_days between 7 and 30
    push_opt_in                      (a yes/no field on its own)

Words (`and`, `or`, `not`, `in`, `between`, `did`, `last`, `days`, `true`, `false`) are
case-insensitive; strings take double or single quotes. A user with no value for a field does not
match a comparison on it (and so does match its `not`). The grammar is lark's (a maintained parser
generator, LALR: linear time, positions on every token), so errors name the position in the text.
A rule is parsed (`parse`), then checked against the fields that exist (`check`, with a `Schema`),
then evaluated against `Columns` that a reader provides: the offline store's latest snapshot for a
preview or a plan job, or each day of the feature tables for a custom label.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Protocol

import numpy as np
import pandas as pd
from lark import (
    Lark,
    Token,
    Transformer,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

MAX_RULE_CHARS = 4_000
MAX_DAYS = 3_650

_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*         -> any_of
?and_expr: not_expr (_AND not_expr)*       -> all_of
?not_expr: _NOT not_expr                   -> negation
         | atom
?atom: "(" or_expr ")"
     | NAME OP value                       -> comparison
     | NAME NOT_KW? _IN "(" value ("," value)* ")"  -> membership
     | NAME NOT_KW? _BETWEEN value _AND value       -> between
     | DID NOT_KW? NAME _IN _THE? _LAST INT _DAYS   -> did
     | NAME                                -> flag
?value: STRING | NUMBER | TRUE | FALSE

OP: "==" | "!=" | "<=" | ">=" | "<" | ">" | "="
_OR.2: /or\b/i
_AND.2: /and\b/i
_NOT.2: /not\b/i
NOT_KW.2: /not\b/i
_IN.2: /in\b/i
_BETWEEN.2: /between\b/i
DID.2: /did\b/i
_THE.2: /the\b/i
_LAST.2: /last\b/i
_DAYS.2: /days?\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
NAME: /(?!(and|or|not|in|between|did|the|last|days?|true|false)\b)[A-Za-z_][A-Za-z0-9_]*/i
INT: /[0-9]+/
NUMBER.1: /-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?/
STRING: /"[^"\\\n]*"/ | /'[^'\\\n]*'/
%ignore /[ \t\r\n]+/
"""


class RuleError(ValueError):
    """A rule that cannot be used, with the position (0-based character offset) it fails at."""

    def __init__(self, message: str, position: int | None = None) -> None:
        where = f" (at position {position})" if position is not None else ""
        super().__init__(f"{message}{where}")
        self.reason = message
        self.position = position


class Kind(StrEnum):
    number = "number"
    text = "text"
    flag = "yes/no"


@dataclass(frozen=True)
class FieldSpec:
    """What a field holds: its kind and, for a closed set of texts (a label), the allowed values."""

    kind: Kind
    values: frozenset[str] | None = None
    about: str = ""


@dataclass(frozen=True)
class Schema:
    """The fields and event names a rule may use."""

    fields: Mapping[str, FieldSpec]
    events: frozenset[str] = frozenset()


Value = str | float | bool


@dataclass(frozen=True)
class Compare:
    name: str
    op: str
    value: Value
    position: int


@dataclass(frozen=True)
class Member:
    name: str
    values: tuple[Value, ...]
    negated: bool
    position: int


@dataclass(frozen=True)
class Between:
    name: str
    low: Value
    high: Value
    negated: bool
    position: int


@dataclass(frozen=True)
class Did:
    event: str
    days: int
    negated: bool
    position: int


@dataclass(frozen=True)
class Flag:
    name: str
    position: int


@dataclass(frozen=True)
class Not:
    part: Node


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Node, ...]


Node = Compare | Member | Between | Did | Flag | Not | AllOf | AnyOf


@dataclass(frozen=True)
class Rule:
    """A parsed rule: its text and tree, and what it reads (so a reader fetches only those)."""

    text: str
    tree: Node
    fields: tuple[str, ...] = field(default=())
    events: tuple[tuple[str, int], ...] = field(default=())


class Columns(Protocol):
    """What a rule is evaluated against: aligned columns, one row per user."""

    def column(self, name: str) -> pd.Series: ...

    def did(self, event: str, days: int) -> np.ndarray: ...


def _literal(token: Token) -> Value:
    if token.type == "STRING":
        return str(token)[1:-1]
    if token.type == "TRUE":
        return True
    if token.type == "FALSE":
        return False
    return float(token)


class _Build(Transformer[Token, Node]):
    """lark's parse tree → the frozen nodes above, each leaf keeping its position."""

    def any_of(self, parts: list[Node]) -> Node:
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def all_of(self, parts: list[Node]) -> Node:
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def negation(self, parts: list[Node]) -> Node:
        return Not(parts[0])

    def comparison(self, parts: list[Token]) -> Node:
        name, op, value = parts
        return Compare(str(name), "=" if op == "==" else str(op), _literal(value), _at(name))

    def membership(self, parts: list[Token]) -> Node:
        negated = parts[1].type == "NOT_KW"
        values = parts[2:] if negated else parts[1:]
        return Member(str(parts[0]), tuple(_literal(v) for v in values), negated, _at(parts[0]))

    def between(self, parts: list[Token]) -> Node:
        negated = parts[1].type == "NOT_KW"
        low, high = parts[-2:]
        return Between(str(parts[0]), _literal(low), _literal(high), negated, _at(parts[0]))

    def did(self, parts: list[Token]) -> Node:
        negated = parts[1].type == "NOT_KW"
        event, days = parts[-2:]
        if int(days) > MAX_DAYS:
            raise RuleError(f"at most {MAX_DAYS} days back, not {int(days)}", _at(days))
        return Did(str(event), int(days), negated, _at(event))

    def flag(self, parts: list[Token]) -> Node:
        return Flag(str(parts[0]), _at(parts[0]))


def _at(token: Token) -> int:
    return int(token.start_pos or 0)


@cache
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", maybe_placeholders=False)


_EXPECTED = {
    "NAME": "a field name",
    "OP": "a comparison (=, !=, <, <=, >, >=)",
    "STRING": "a quoted text",
    "NUMBER": "a number",
    "INT": "a whole number of days",
    "RPAR": "')'",
    "LPAR": "'('",
    "COMMA": "','",
    "_IN": "'in'",
    "_AND": "'and'",
    "_OR": "'or'",
    "_NOT": "'not'",
    "NOT_KW": "'not'",
    "DID": "'did'",
    "TRUE": "true",
    "FALSE": "false",
    "_LAST": "'last'",
    "_DAYS": "'days'",
}


def parse(text: str) -> Rule:
    """The rule in `text`, or RuleError naming what is wrong and where (no field is checked here)."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("the rule is empty")
    if len(text) > MAX_RULE_CHARS:
        raise RuleError(f"the rule is {len(text)} characters long; at most {MAX_RULE_CHARS}")
    try:
        tree = _Build().transform(_parser().parse(text))
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    except Exception as exc:  # lark wraps errors raised in the transformer
        inner = getattr(exc, "orig_exc", None)
        if isinstance(inner, RuleError):
            raise inner from None
        raise
    leaves = _leaves(tree)
    fields = [leaf.name for leaf in leaves if not isinstance(leaf, Did)]
    events = [(leaf.event, leaf.days) for leaf in leaves if isinstance(leaf, Did)]
    return Rule(text, tree, tuple(dict.fromkeys(fields)), tuple(dict.fromkeys(events)))


def _syntax_error(text: str, exc: UnexpectedInput) -> RuleError:
    if isinstance(exc, UnexpectedEOF):
        return RuleError("the rule ends too early", len(text))
    position = int(getattr(exc, "pos_in_stream", None) or 0)
    if isinstance(exc, UnexpectedCharacters):
        return RuleError(f"unexpected character {text[position]!r}", position)
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return RuleError("the rule ends too early", len(text))
        wanted = sorted({_EXPECTED.get(t, "") for t in exc.expected} - {""})
        hint = f"; expected {' or '.join(wanted)}" if wanted else ""
        return RuleError(f"unexpected {str(token)!r}{hint}", int(token.start_pos or position))
    return RuleError("malformed rule", position)


def _leaves(node: Node) -> list[Compare | Member | Between | Did | Flag]:
    """The clauses of a rule, left to right (what it reads: fields and events)."""
    if isinstance(node, Not):
        return _leaves(node.part)
    if isinstance(node, AllOf | AnyOf):
        return [leaf for part in node.parts for leaf in _leaves(part)]
    return [node]


def compile_rule(text: str, schema: Schema) -> Rule:
    """Parse and check: the rule ready to evaluate, or RuleError with the field and position."""
    rule = parse(text)
    check(rule, schema)
    return rule


def check(rule: Rule, schema: Schema) -> None:
    """Every field exists and every value has the field's kind (and is one of a label's values)."""
    _check(rule.tree, schema)


def _check(node: Node, schema: Schema) -> None:
    if isinstance(node, Not):
        _check(node.part, schema)
    elif isinstance(node, AllOf | AnyOf):
        for part in node.parts:
            _check(part, schema)
    elif isinstance(node, Did):
        if node.event not in schema.events:
            raise RuleError(
                f"unknown event {node.event!r}{_suggest(node.event, schema.events)}", node.position
            )
    elif isinstance(node, Flag):
        spec = _field(node.name, node.position, schema)
        if spec.kind != Kind.flag:
            raise RuleError(
                f"field {node.name!r} is a {spec.kind}, not yes/no: compare it (e.g. {node.name} = …)",
                node.position,
            )
    elif isinstance(node, Compare):
        spec = _field(node.name, node.position, schema)
        if node.op not in ("=", "!=") and spec.kind != Kind.number:
            raise RuleError(f"field {node.name!r} is a {spec.kind}: only = and != apply to it", node.position)
        _check_value(node.name, spec, node.value, node.position)
    elif isinstance(node, Member):
        spec = _field(node.name, node.position, schema)
        for value in node.values:
            _check_value(node.name, spec, value, node.position)
    elif isinstance(node, Between):
        spec = _field(node.name, node.position, schema)
        if spec.kind != Kind.number:
            raise RuleError(f"field {node.name!r} is a {spec.kind}: 'between' needs a number", node.position)
        for value in (node.low, node.high):
            _check_value(node.name, spec, value, node.position)


def _field(name: str, position: int, schema: Schema) -> FieldSpec:
    spec = schema.fields.get(name)
    if spec is None:
        raise RuleError(f"unknown field {name!r}{_suggest(name, schema.fields)}", position)
    return spec


def _suggest(name: str, known: Sequence[str] | Mapping[str, object] | frozenset[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(name: str, spec: FieldSpec, value: Value, position: int) -> None:
    got = Kind.flag if isinstance(value, bool) else Kind.text if isinstance(value, str) else Kind.number
    if got != spec.kind:
        raise RuleError(f"field {name!r} is a {spec.kind}, compared with a {got} ({value!r})", position)
    if spec.values is not None and value not in spec.values:
        allowed = ", ".join(sorted(spec.values))
        raise RuleError(f"field {name!r} has no value {value!r}; it is one of: {allowed}", position)
    if isinstance(value, float) and not math.isfinite(value):
        raise RuleError(f"field {name!r}: {value!r} is not a finite number", position)


def evaluate(rule: Rule, columns: Columns) -> np.ndarray:
    """A boolean mask over the `columns`' users: who the rule selects."""
    return _evaluate(rule.tree, columns)


_COMPARE = {
    "=": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _evaluate(node: Node, columns: Columns) -> np.ndarray:
    if isinstance(node, AllOf):
        return np.logical_and.reduce([_evaluate(p, columns) for p in node.parts])
    if isinstance(node, AnyOf):
        return np.logical_or.reduce([_evaluate(p, columns) for p in node.parts])
    if isinstance(node, Not):
        return ~_evaluate(node.part, columns)
    if isinstance(node, Did):
        done = np.asarray(columns.did(node.event, node.days), dtype=bool)
        return ~done if node.negated else done
    if isinstance(node, Flag):
        return columns.column(node.name).astype("boolean").fillna(False).to_numpy(dtype=bool)
    values = _known(columns.column(node.name))
    present = values.notna().to_numpy()
    if isinstance(node, Compare):
        if isinstance(node.value, str | bool):
            hit = (values == node.value).to_numpy(dtype=bool)
            hit = hit if node.op == "=" else ~hit
        else:
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):
                hit = _COMPARE[node.op](numbers, node.value)
        return hit & present
    if isinstance(node, Member):
        hit = values.isin(list(node.values)).to_numpy(dtype=bool)
        return (~hit if node.negated else hit) & present
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        inside = (numbers >= float(node.low)) & (numbers <= float(node.high))
    return (~inside if node.negated else inside) & present


def _known(values: pd.Series) -> pd.Series:
    """Missing values as NaN/None whatever the column's dtype (Arrow-backed or object)."""
    return values.astype(object).where(values.notna(), None)


def describe(schema: Schema) -> list[dict[str, object]]:
    """The fields a rule may use, for `pushplan audience fields` and the API's error hints."""
    return [
        {
            "field": name,
            "kind": str(spec.kind),
            "values": sorted(spec.values) if spec.values is not None else None,
            "about": spec.about,
        }
        for name, spec in sorted(schema.fields.items())
    ]
