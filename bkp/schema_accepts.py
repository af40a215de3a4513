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


def accepts(schema: dict | bool, value: Any,
            pattern: Callable[[str], re.Pattern]) -> bool | None:
    """True or False as jsonschema would say; None when the schema uses a keyword this
    checker does not know. `pattern` compiles a schema pattern with its published meaning."""
    try:
        return _accepts(schema, value, pattern)
    except _Unknown:
        return None


def _accepts(schema, value, pattern) -> bool:
    if schema is True:
        return True
    if schema is False:
        return False
    for keyword, argument in schema.items():
        if keyword in ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            raise _Unknown(keyword)
        if not check(argument, value, schema, pattern):
            return False
    return True


def _is_type(value: Any, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "null":
        return value is None
    raise _Unknown(f"type {name}")


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


def _type(argument, value, _schema, _pattern) -> bool:
    names = argument if isinstance(argument, list) else [argument]
    return any(_is_type(value, name) for name in names)


def _properties(argument, value, _schema, pattern) -> bool:
    if not isinstance(value, dict):
        return True
    return all(_accepts(argument[key], value[key], pattern)
               for key in value if key in argument)


def _additional(argument, value, schema, pattern) -> bool:
    if not isinstance(value, dict):
        return True
    if "patternProperties" in schema:
        raise _Unknown("patternProperties")
    known = schema.get("properties", {})
    return all(_accepts(argument, value[key], pattern) for key in value if key not in known)


def _required(argument, value, _schema, _pattern) -> bool:
    return not isinstance(value, dict) or all(key in value for key in argument)


def _items(argument, value, schema, pattern) -> bool:
    if "prefixItems" in schema:
        raise _Unknown("prefixItems")
    return not isinstance(value, list) or all(_accepts(argument, item, pattern)
                                              for item in value)


def _unique(argument, value, _schema, _pattern) -> bool:
    if not argument or not isinstance(value, list):
        return True
    return not any(_equal(a, b) for i, a in enumerate(value) for b in value[i + 1:])


def _if(argument, value, schema, pattern) -> bool:
    if _accepts(argument, value, pattern):
        return _accepts(schema.get("then", True), value, pattern)
    return _accepts(schema.get("else", True), value, pattern)


def _length(limit: Callable[[int, int], bool]):
    def check(argument, value, _schema, _pattern) -> bool:
        return not isinstance(value, str) or limit(len(value), argument)
    return check


def _count(limit: Callable[[int, int], bool]):
    def check(argument, value, _schema, _pattern) -> bool:
        return not isinstance(value, list) or limit(len(value), argument)
    return check


def _bound(limit: Callable[[Any, Any], bool]):
    def check(argument, value, _schema, _pattern) -> bool:
        return not _number(value) or limit(value, argument)
    return check


_KEYWORDS: dict[str, Callable[[Any, Any, dict, Callable], bool]] = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "items": _items,
    "uniqueItems": _unique,
    "minItems": _count(lambda n, limit: n >= limit),
    "maxItems": _count(lambda n, limit: n <= limit),
    "minLength": _length(lambda n, limit: n >= limit),
    "maxLength": _length(lambda n, limit: n <= limit),
    # Written as jsonschema fails them, so that NaN passes here as it passes there.
    "minimum": _bound(lambda v, limit: not v < limit),
    "maximum": _bound(lambda v, limit: not v > limit),
    "exclusiveMinimum": _bound(lambda v, limit: not v <= limit),
    "exclusiveMaximum": _bound(lambda v, limit: not v >= limit),
    "pattern": lambda argument, value, _s, pattern: (
        not isinstance(value, str) or bool(pattern(argument).search(value))),
    "const": lambda argument, value, _s, _p: _equal(argument, value),
    "enum": lambda argument, value, _s, _p: any(_equal(choice, value) for choice in argument),
    "not": lambda argument, value, _s, pattern: not _accepts(argument, value, pattern),
    "allOf": lambda argument, value, _s, pattern: all(
        _accepts(branch, value, pattern) for branch in argument),
    "anyOf": lambda argument, value, _s, pattern: any(
        _accepts(branch, value, pattern) for branch in argument),
    "oneOf": lambda argument, value, _s, pattern: sum(
        _accepts(branch, value, pattern) for branch in argument) == 1,
    "if": _if,
    "then": lambda *_: True,  # judged with "if"
    "else": lambda *_: True,
}
