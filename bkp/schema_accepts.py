"""Whether a value satisfies one of bkp's JSON Schemas (draft 2020-12), fast.

jsonschema explains what is wrong, and bkp turns its errors into advice; but asking it of a
thousand valid policies costs about half a second (`bkp status` of a fleet). This answers
only yes or no, for the keywords bkp's schemas use, with jsonschema's meaning (a
differential fuzz test holds the two to the same answers); a keyword it does not know
makes it answer None, and the caller asks jsonschema. Only a "yes" is ever taken from here:
a "no" is explained by jsonschema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# What describes without constraining.
ANNOTATIONS = frozenset({"$schema", "title", "description", "examples", "default",
                         "x-pattern-message", "$comment"})


class _Unknown(Exception):
    """A keyword this checker does not implement."""


Check = Callable[[Any], bool]
_compiled: dict[int, tuple[dict | bool, Check | None]] = {}


def accepts(schema: dict | bool, value: Any,
            pattern: Callable[[str], re.Pattern]) -> bool | None:
    """True or False as jsonschema would say; None when the schema uses a keyword this
    checker does not know. `pattern` compiles a schema pattern with its published meaning.
    A schema is turned into nested checks once (kept by identity: bkp's schemas live as
    long as the process)."""
    entry = _compiled.get(id(schema))
    if entry is None or entry[0] is not schema:
        try:
            check = _compile(schema, pattern)
        except _Unknown:
            check = None
        entry = _compiled[id(schema)] = (schema, check)
    return None if entry[1] is None else entry[1](value)


def _compile(schema: dict | bool, pattern) -> Check:
    if schema is True:
        return _yes
    if schema is False:
        return _no
    checks = []
    for keyword, argument in schema.items():
        if keyword in ANNOTATIONS or keyword in ("then", "else"):  # "then": with "if"
            continue
        make = _KEYWORDS.get(keyword)
        if make is None:
            raise _Unknown(keyword)
        checks.append(make(argument, schema, pattern))
    if len(checks) == 1:
        return checks[0]

    def all_of(value: Any) -> bool:
        return all(check(value) for check in checks)
    return all_of


def _yes(_value: Any) -> bool:
    return True


def _no(_value: Any) -> bool:
    return False


_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(one: Any, two: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0, lists and objects element by element."""
    if isinstance(one, str) or isinstance(two, str):
        return one == two
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_equal(one[k], two[k]) for k in one)
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    if isinstance(one, list | dict) or isinstance(two, list | dict):
        return False
    return one == two


def _type(argument, _schema, _pattern) -> Check:
    names = argument if isinstance(argument, list) else [argument]
    unknown = [name for name in names if name not in _TYPES]
    if unknown:
        raise _Unknown(f"type {unknown[0]}")
    tests = [_TYPES[name] for name in names]
    return lambda value: any(test(value) for test in tests)


def _properties(argument, _schema, pattern) -> Check:
    compiled = {key: _compile(sub, pattern) for key, sub in argument.items()}

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for key, item in value.items():
            sub = compiled.get(key)
            if sub is not None and not sub(item):
                return False
        return True
    return check


def _additional(argument, schema, pattern) -> Check:
    if "patternProperties" in schema:
        raise _Unknown("patternProperties")
    known = set(schema.get("properties", {}))
    sub = _compile(argument, pattern)
    return lambda value: not isinstance(value, dict) or all(
        sub(item) for key, item in value.items() if key not in known)


def _required(argument, _schema, _pattern) -> Check:
    return lambda value: not isinstance(value, dict) or all(key in value for key in argument)


def _items(argument, schema, pattern) -> Check:
    if "prefixItems" in schema:
        raise _Unknown("prefixItems")
    sub = _compile(argument, pattern)
    return lambda value: not isinstance(value, list) or all(sub(item) for item in value)


def _unique(argument, _schema, _pattern) -> Check:
    if not argument:
        return _yes
    return lambda value: not isinstance(value, list) or not any(
        _equal(a, b) for i, a in enumerate(value) for b in value[i + 1:])


def _if(argument, schema, pattern) -> Check:
    condition = _compile(argument, pattern)
    then = _compile(schema.get("then", True), pattern)
    otherwise = _compile(schema.get("else", True), pattern)
    return lambda value: then(value) if condition(value) else otherwise(value)


def _pattern(argument, _schema, pattern) -> Check:
    search = pattern(argument).search
    return lambda value: not isinstance(value, str) or bool(search(value))


def _property_names(argument, _schema, pattern) -> Check:
    sub = _compile(argument, pattern)
    return lambda value: not isinstance(value, dict) or all(sub(key) for key in value)


def _size(kind: type, limit: Callable[[int, int], bool]):
    """A bound on the length of a string, list or mapping; other values pass."""
    def make(argument, _schema, _pattern) -> Check:
        return lambda value: not isinstance(value, kind) or limit(len(value), argument)
    return make


def _bound(limit: Callable[[Any, Any], bool]):
    def make(argument, _schema, _pattern) -> Check:
        return lambda value: not _number(value) or limit(value, argument)
    return make


def _branches(combine: Callable[[list[bool]], bool]):
    def make(argument, _schema, pattern) -> Check:
        subs = [_compile(branch, pattern) for branch in argument]
        return lambda value: combine([sub(value) for sub in subs])
    return make


def _not(argument, _schema, pattern) -> Check:
    sub = _compile(argument, pattern)
    return lambda value: not sub(value)


_KEYWORDS: dict[str, Callable[[Any, dict, Callable], Check]] = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "items": _items,
    "uniqueItems": _unique,
    "minItems": _size(list, lambda n, limit: n >= limit),
    "maxItems": _size(list, lambda n, limit: n <= limit),
    "propertyNames": _property_names,
    "minProperties": _size(dict, lambda n, limit: n >= limit),
    "maxProperties": _size(dict, lambda n, limit: n <= limit),
    "minLength": _size(str, lambda n, limit: n >= limit),
    "maxLength": _size(str, lambda n, limit: n <= limit),
    # Written as jsonschema fails them, so that NaN passes here as it passes there.
    "minimum": _bound(lambda v, limit: not v < limit),
    "maximum": _bound(lambda v, limit: not v > limit),
    "exclusiveMinimum": _bound(lambda v, limit: not v <= limit),
    "exclusiveMaximum": _bound(lambda v, limit: not v >= limit),
    "pattern": _pattern,
    "const": lambda argument, _s, _p: lambda value: _equal(argument, value),
    "enum": lambda argument, _s, _p: lambda value: any(_equal(c, value) for c in argument),
    "not": _not,
    "allOf": _branches(all),
    "anyOf": _branches(any),
    "oneOf": _branches(lambda answers: sum(answers) == 1),
    "if": _if,
}
