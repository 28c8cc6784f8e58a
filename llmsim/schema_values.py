"""Plausible JSON values that validate against a JSON schema: tool arguments and structured outputs.

Covers what the providers accept in strict mode and what pydantic emits:
types (and type lists), enum, const, objects with properties / required /
additionalProperties / patternProperties / propertyNames / min/maxProperties /
dependentRequired, arrays with items / prefixItems / min/maxItems /
uniqueItems / contains, anyOf / oneOf / allOf (bounds merged), not,
if/then/else and dependentSchemas (drawn, then checked), $ref into $defs or
definitions, numeric bounds (minimum, maximum, exclusive bounds, multipleOf),
string lengths and the common formats.
Strings are words, and a few property names get values of their kind (a city
for `location`, an address for `email`), so arguments read like a model's.
A `pattern` gets a string drawn from the expression (llmsim/regex_strings.py),
or a plain word when it cannot be drawn.
"""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

from jsonschema.validators import validator_for

from .regex_strings import MAX_CHARS as PATTERN_MAX_CHARS
from .regex_strings import string_for_pattern
from .validation import finite_float

_WORDS = ("alpha", "river", "stone", "lumen", "orbit", "cedar", "delta", "ember", "frost", "harbor", "indigo",
          "juniper", "kestrel", "lattice", "meadow", "nimbus", "onyx", "prism", "quartz", "summit", "tundra",
          "velvet", "willow", "zephyr", "beacon", "canyon", "falcon", "garnet", "horizon", "island")
_CITIES = ("Paris, France", "Tokyo, Japan", "Boston, MA", "Lisbon, Portugal", "Nairobi, Kenya", "Toronto, Canada")
_NAMES = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Katherine Johnson", "Edsger Dijkstra", "Barbara Liskov")
_HINTS: dict[str, tuple[str, ...]] = {
    "location": _CITIES, "city": _CITIES, "place": _CITIES, "address": ("221B Baker Street, London",
                                                                     "1600 Amphitheatre Parkway, Mountain View"),
    "name": _NAMES, "full_name": _NAMES, "author": _NAMES, "user": _NAMES,
    "unit": ("celsius", "fahrenheit"), "units": ("metric", "imperial"),
    "query": ("latest results", "weather forecast", "open issues"), "country": ("France", "Japan", "Kenya"),
    "language": ("English", "French", "Japanese"), "currency": ("USD", "EUR", "JPY"),
    "title": ("Quarterly report", "Release notes", "Meeting summary"),
}
_FORMATS = {
    "date-time": lambda r: f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:"
                           f"{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
    "date": lambda r: f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
    "duration": lambda r: f"PT{r.randint(1, 59)}M",
    "email": lambda r: f"{r.choice(_WORDS)}.{r.choice(_WORDS)}@example.com",
    "hostname": lambda r: f"{r.choice(_WORDS)}.example.com",
    "ipv4": lambda r: ".".join(str(r.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda r: ":".join(f"{r.randint(0, 65535):x}" for _ in range(8)),
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
    "uri": lambda r: f"https://example.com/{r.choice(_WORDS)}",
    "url": lambda r: f"https://example.com/{r.choice(_WORDS)}",
}
_FORMATS["uri-reference"] = _FORMATS["uri"]
MAX_DEPTH = 8
"""Below this depth optional properties, alternatives and array lengths are drawn; past it, only what is required."""
HARD_DEPTH = 48
"""Past this depth a schema that refers to itself (a required self-reference, allOf: [$ref: #]) gets the
smallest value of its type: such a schema may have no finite instance at all."""
ONE_OF_TRIES = 8
"""Draws a oneOf gets to find a value only one of its branches accepts."""
MAX_NODES = 20_000
"""At most this many values in one document (a valid schema may ask for 2**48: {l: #, r: #}, both required)."""
_SMALLEST = {"object": dict, "array": list, "string": str, "integer": int, "number": int, "boolean": bool}


class SchemaValues:
    """Generates values for one schema document (its $defs resolve against the root)."""

    def __init__(self, root: dict, rng: random.Random, *, optional_probability: float = 0.5,
                 max_chars: int | None = None) -> None:
        self.root = root
        self.rng = rng
        self.optional_probability = optional_probability
        self.left = max_chars if max_chars is not None else math.inf
        """Characters still worth generating: past them arrays and strings stop growing (see value_for_schema)."""
        self.nodes = MAX_NODES
        """Values still to make: a schema whose required parts refer to it twice doubles at every level."""
        self._validator: Any = None
        """The root's jsonschema validator, made when a oneOf, a not or an if needs to check a draw
        (False: a schema whose checks would never end, see _loops_in_place)."""

    def value(self, schema: Any = None, name: str | None = None, depth: int = 0) -> Any:
        schema = self.root if schema is None else schema
        if schema is True or not isinstance(schema, dict):
            return self._spent(self.rng.choice(_WORDS))
        schema = self._resolve(schema)
        self.nodes -= 1
        if depth > HARD_DEPTH or self.nodes < 0 or self.left <= 0:
            kind = schema.get("type")
            return _SMALLEST.get(kind, type(None))() if isinstance(kind, str) else None
        if "const" in schema:
            return self._spent(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._spent(self.rng.choice(schema["enum"]))
        if "allOf" in schema and isinstance(schema["allOf"], list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            parts = [self._resolve(part) if isinstance(part, dict) else _part(part) for part in schema["allOf"]]
            for part in parts:
                _merge_into(merged, part)
            if sum("if" in p for p in (schema, *parts)) < 2:
                return self.value(merged, name, depth + 1)  # deeper: a part may hold the allOf again (via $ref)
            # Two conditionals: the merge keeps the first, so each draw is checked against them all.
            return self._first_accepted([merged], [schema], name, depth)
        if "not" in schema or "if" in schema or isinstance(schema.get("dependentSchemas"), dict):
            return self._checked(schema, name, depth)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                # Prefer a non-null branch: a model fills optional fields more often than not.
                real = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                if depth >= MAX_DEPTH:
                    return self.value(options[-1], name, depth + 1)
                if key == "oneOf" and len(options) > 1:
                    return self._one_of(options, real, name, depth)
                return self.value(self.rng.choice(real or options), name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            real = [k for k in kind if k != "null"]
            kind = self.rng.choice(real) if real else "null"
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        made = getattr(self, f"_{kind}", self._string)(schema, name, depth)
        return made if isinstance(made, (dict, list, str)) else self._spent(made)  # those count themselves

    def _checked(self, schema: dict, name: str | None, depth: int) -> Any:
        """`not`, `if`/`then`/`else` and `dependentSchemas`: a draw of the rest of the schema (with `if` and
        `then`, or with `else`; with a dependent key and its schema, or without), kept when the whole schema
        accepts it, else drawn again, up to ONE_OF_TRIES times."""
        rest = {k: v for k, v in schema.items() if k not in ("not", "if", "then", "else", "dependentSchemas")}
        branches: list[dict] = [rest]
        if "if" in schema:
            when = [_part(schema["if"]), _part(schema.get("then", True))]
            branches = [{"allOf": [rest, *when]}, {"allOf": [rest, _part(schema.get("else", True))]}]
        depends = schema.get("dependentSchemas")
        if isinstance(depends, dict):
            branches += [{"allOf": [b, {"required": [key]}, _part(sub)]} for b in list(branches)
                         for key, sub in depends.items()]
        self.rng.shuffle(branches)
        return self._first_accepted(branches, [schema], name, depth)

    def _one_of(self, options: list, real: list, name: str | None, depth: int) -> Any:
        """A value exactly one branch accepts: a draw that several accept ({type: integer} and
        {type: number} both take 3) is drawn again, from the next branch in a shuffled order."""
        order = self.rng.sample(real, len(real)) + [o for o in options if o not in real]
        return self._first_accepted(order, options, name, depth)

    def _first_accepted(self, candidates: list, options: list, name: str | None, depth: int) -> Any:
        """A draw from each of `candidates` in turn until exactly one of `options` accepts it (the last
        draw after ONE_OF_TRIES)."""
        value: Any = None
        for attempt in range(ONE_OF_TRIES):
            value = self.value(candidates[attempt % len(candidates)], name, depth + 1)
            if self._accepted_by(options, value) == 1:
                break
        return value

    def _accepted_by(self, options: list, value: Any) -> int:
        """How many of `options` accept `value` (1 when the schema cannot be checked: as drawn)."""
        if self._validator is None:
            if _loops_in_place(self.root):  # jsonschema would recurse until Python's limit, at every check
                self._validator = False
                return 1
            try:
                self._validator = validator_for(self.root)(self.root)
            except Exception:  # noqa: BLE001 - a schema jsonschema cannot load: the draw stands
                return 1
        if self._validator is False:
            return 1
        try:
            return sum(1 for o in options if self._validator.evolve(schema=o).is_valid(value))
        except Exception:  # noqa: BLE001 - an unresolvable $ref, a bad keyword: the draw stands
            return 1

    def _spent(self, value: Any) -> Any:
        """`value`, its length in JSON (about) taken from what is left to generate."""
        self.left -= len(str(value)) + 2
        return value

    def _resolve(self, schema: dict) -> dict:
        seen = 0
        while isinstance(schema.get("$ref"), str) and seen < 32:
            target = _pointed(self.root, schema["$ref"])
            if target is None:
                return {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def _object(self, schema: dict, name: str | None, depth: int) -> dict:
        raw_props = schema.get("properties")
        props: dict = raw_props if isinstance(raw_props, dict) else {}
        raw_required = schema.get("required")
        # In the schema's order, not a set's: a set of strings iterates in an order that changes per process.
        required = dict.fromkeys(r for r in raw_required if isinstance(r, str)) if isinstance(raw_required, list) \
            else {}
        depends = schema.get("dependentRequired")
        depends = depends if isinstance(depends, dict) else {}
        most = schema.get("maxProperties")
        # Optional keys only while they (and what they bring along) leave room for the required ones.
        room = most - len(required) if isinstance(most, int) else math.inf
        out: dict[str, Any] = {}
        for key, sub in props.items():
            brings = [k for k in _needed(key, depends) if k not in required and k not in out]
            if key in required or (depth < MAX_DEPTH and 1 + len(brings) <= room
                                   and self.rng.random() < self.optional_probability):
                if key not in required:
                    room -= 1 + len(brings)
                    for k in brings:  # dependentRequired: a key present brings the keys it names
                        required[k] = None
                self.left -= len(key) + 4
                out[key] = self.value(sub, key, depth + 1)
        for key in (r for r in required if r not in out):
            # required, or brought by a present key, but maybe described later or not at all
            out[key] = self.value(props[key], key, depth + 1) if key in props else self.rng.choice(_WORDS)
        minimum = schema.get("minProperties")
        extra = schema.get("additionalProperties", True)
        patterns = schema.get("patternProperties")
        patterns = [(p, v) for p, v in patterns.items() if isinstance(p, str)] if isinstance(patterns, dict) else []
        names = schema.get("propertyNames")
        tries = 0
        while isinstance(minimum, int) and len(out) < minimum and self.left > 0 and tries < 50 * (minimum + 1):
            tries += 1
            key, sub = self._extra_key(patterns, extra, names, len(out), depth)
            if key is None:
                break
            if isinstance(most, int) and len(out) >= most:
                break
            if key in out:
                continue
            self.left -= len(key) + 4
            out[key] = self.value(sub, None, depth + 1)
        return out

    def _extra_key(self, patterns: list, extra: Any, names: Any, count: int, depth: int) -> tuple[str | None, Any]:
        """A key beyond `properties` and the schema its value takes: one a `patternProperties` pattern draws,
        else (when additionalProperties allows it) a word, or what `propertyNames` draws."""
        if patterns:
            pattern, sub = self.rng.choice(patterns)
            key = string_for_pattern(pattern, self.rng, max_length=40)
            if key is not None:
                return key, sub
        if extra is False:
            return None, None
        if isinstance(names, dict):
            drawn = self.value({"type": "string", **names}, None, depth + 1)
            return (drawn, extra) if isinstance(drawn, str) else (None, None)
        return f"{self.rng.choice(_WORDS)}_{count}", extra if isinstance(extra, dict) else {}

    def _array(self, schema: dict, name: str | None, depth: int) -> list:
        raw_prefix = schema.get("prefixItems")
        prefix: list = raw_prefix if isinstance(raw_prefix, list) else []
        lo = schema.get("minItems", 1 if depth < MAX_DEPTH else 0)
        hi = schema.get("maxItems", max(lo, 3))
        lo, hi = int(lo), int(max(lo, hi))
        if depth >= MAX_DEPTH:
            hi = lo
        n = max(len(prefix), self.rng.randint(lo, min(hi, lo + 3))) if hi >= lo else lo
        items = schema.get("items", {})
        if items is False:  # nothing past the prefix
            n = min(n, len(prefix))
        out: list = [self.value(p, name, depth + 1) for p in prefix[:n]]
        unique = bool(schema.get("uniqueItems"))
        each: Any = items if items is not False else {}
        contains, wanted, spare = schema.get("contains"), 0, math.inf
        if isinstance(contains, (dict, bool)) and "contains" in schema:
            wanted = schema.get("minContains", 1)
            wanted = wanted if isinstance(wanted, int) and wanted >= 0 else 1
            n = max(n, len(out) + wanted)
            most = schema.get("maxContains")
            if isinstance(most, int):  # the other items may match `contains` only this often
                spare = most - wanted
        tries = 0
        while len(out) < n and tries < 50 * (n + 1) and self.left > 0:
            tries += 1
            matching = wanted > 0
            v = self.value({"allOf": [_part(contains), _part(each)]} if matching else each, _singular(name),
                           depth + 1)
            if unique and v in out:
                continue
            if not matching and spare < math.inf and self._accepted_by([contains], v):
                if spare <= 0:
                    continue
                spare -= 1
            out.append(v)
            wanted -= matching
        return out

    def _string(self, schema: dict, name: str | None, depth: int) -> str:
        rng = self.rng
        fmt = schema.get("format")
        pattern = schema.get("pattern")
        lo = int(schema.get("minLength", 0))
        hi = int(schema.get("maxLength", max(lo, 60)))
        if isinstance(pattern, str):
            # A value max_tokens will cut is drawn only as far as it could be sent (value_for_schema).
            sent = max(1, int(min(self.left, PATTERN_MAX_CHARS)))
            made = string_for_pattern(pattern, rng, min_length=min(lo, sent), max_length=min(hi, sent))
            if made is not None:
                return self._spent(made)
        if isinstance(fmt, str) and fmt in _FORMATS:
            text = _FORMATS[fmt](rng)
        else:
            hint = _HINTS.get((name or "").lower())
            text = rng.choice(hint) if hint else " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        while len(text) < lo and len(text) < self.left:
            text += " " + rng.choice(_WORDS)
        return self._spent(text[:hi] if len(text) > hi else text)

    def _number(self, schema: dict, name: str | None, depth: int, integer: bool = False) -> float | int:
        lo, lo_open = _bound(schema, "minimum", "exclusiveMinimum", max)
        hi, hi_open = _bound(schema, "maximum", "exclusiveMaximum", min)
        if math.isinf(lo) and math.isinf(hi):
            lo, hi = 0, 100
        elif math.isinf(lo):
            lo = hi - 100
        elif math.isinf(hi):
            hi = lo + 100
        given: Any = schema.get("multipleOf")
        step: float | None = None
        if finite_float(given) is not None and given > 0:
            step = given  # as given: an int step keeps whole values ints
        if integer:  # a whole number is a multiple of 1 too: the step is the smallest whole multiple of both
            step = _whole_step(step) if step is not None else 1
        if step is not None and math.isfinite(lo / step) and math.isfinite(hi / step):
            k_lo, k_hi = math.ceil(lo / step), math.floor(hi / step)
            if lo_open and k_lo * step <= lo:
                k_lo += 1
            if hi_open and k_hi * step >= hi:
                k_hi -= 1
            k = self.rng.randint(k_lo, k_hi) if k_hi >= k_lo else k_lo
            value = k * step
            if integer or (isinstance(step, int) and float(value).is_integer()):
                return int(round(value))
            return round(value, 12)  # k x 0.1 is 0.30000000000000004: the decimal the step means
        value = round(self.rng.uniform(lo, hi), 2)
        if not (lo < value < hi or (value == lo and not lo_open) or (value == hi and not hi_open)):
            # Rounding crossed a bound (or met an exclusive one): the midpoint, unrounded, is inside.
            value = (lo + hi) / 2
        return value

    def _integer(self, schema: dict, name: str | None, depth: int) -> int:
        return int(self._number(schema, name, depth, integer=True))

    def _boolean(self, schema: dict, name: str | None, depth: int) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict, name: str | None, depth: int) -> None:
        return None


def _bound(schema: dict, inclusive: str, exclusive: str, tighter: Any) -> tuple[float, bool]:
    """A lower or upper bound (`tighter` is max for a lower one) and whether it is exclusive."""
    unset = -math.inf if tighter is max else math.inf
    given = [(v, False) for v in (schema.get(inclusive),) if _numeric(v)] + \
        [(v, True) for v in (schema.get(exclusive),) if _numeric(v)]
    if not given:
        return unset, False
    bound = tighter(v for v, _ in given)
    return bound, any(v == bound and is_open for v, is_open in given)


def _numeric(v: Any) -> bool:
    return finite_float(v) is not None


def _whole_step(step: float) -> int:
    """The smallest whole multiple of `step` (2.5 -> 5, 0.5 -> 1, 3 -> 3); `step` itself when none is near."""
    for m in range(1, 1001):
        v = step * m
        if abs(v - round(v)) < 1e-9 and round(v) > 0:
            return int(round(v))
    return max(1, math.ceil(step))


_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains")


def _merge_into(merged: dict, part: dict) -> None:
    """One allOf part folded into the schema drawn from: both sides' bounds hold (the tighter is kept),
    enums and type lists intersect, a property or dependent key both describe takes both descriptions,
    two `not`s refuse either, and the rest (a second `if`, for one) is the first part's that says it."""
    for k, v in part.items():
        have = merged.get(k)
        if k in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas") \
                and isinstance(v, dict):
            both = dict(have) if isinstance(have, dict) else {}
            for name, sub in v.items():
                shared = k in ("properties", "dependentSchemas") and name in both
                both[name] = {"allOf": [both[name], sub]} if shared else sub
            merged[k] = both
        elif k == "required" and isinstance(v, list):
            merged[k] = list(dict.fromkeys([*(have if isinstance(have, list) else []), *v]))
        elif k not in merged:
            merged[k] = v
        elif k in _LOWER and _numeric(v) and _numeric(have):
            merged[k] = max(have, v)
        elif k in _UPPER and _numeric(v) and _numeric(have):
            merged[k] = min(have, v)
        elif k == "enum" and isinstance(v, list) and isinstance(have, list):
            merged[k] = [x for x in have if x in v] or have
        elif k == "type" and isinstance(v, (str, list)) and isinstance(have, (str, list)):
            common = _types_in_both(have, v)
            merged[k] = (common[0] if len(common) == 1 else common) if common else have
        elif k == "not" and isinstance(v, (dict, bool)):
            merged[k] = {"anyOf": [have, v]}  # neither A nor B: not (A or B)
        elif k in ("contains", "items") and isinstance(v, dict) and isinstance(have, dict):
            merged[k] = {"allOf": [have, v]}


def _types_in_both(a: str | list, b: str | list) -> list:
    """The types two `type`s both allow (an integer is a number)."""
    a, b = ([a] if isinstance(a, str) else a), ([b] if isinstance(b, str) else b)
    return [t for t in a if t in b or (t == "integer" and "number" in b)] + \
        [t for t in b if t == "integer" and "number" in a and t not in a]


def _pointed(root: Any, ref: str) -> dict | None:
    """The schema a local $ref ("#", "#/$defs/node") points to in `root`, or None."""
    target = root
    if ref != "#":
        for part in ref.lstrip("#/").split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else None


_IN_PLACE = frozenset(("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "$ref"))
"""Keywords whose subschemas apply to the value itself, not to a part of it."""


def _loops_in_place(root: Any) -> bool:
    """Whether some subschema reaches itself through `_IN_PLACE` keywords and $refs (`{if: {$ref: "#"}}`):
    checking any value against it never reaches a smaller part of the value, so it never ends. Such a loop
    passes through a $ref, so only the schemas holding one are searched from."""
    def next_to(node: dict) -> list[dict]:
        out: list[Any] = []
        for key in _IN_PLACE.intersection(node):
            sub = node[key]
            if key == "$ref":
                out.append(_pointed(root, sub) if isinstance(sub, str) else None)
            elif isinstance(sub, list):
                out.extend(sub)
            elif key == "dependentSchemas" and isinstance(sub, dict):
                out.extend(sub.values())
            else:
                out.append(sub)
        return [n for n in out if isinstance(n, dict)]

    starts: list[dict] = []
    todo: list[Any] = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "$ref" in node:
                starts.append(node)
            todo.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            todo.extend(v for v in node if isinstance(v, (dict, list)))
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in starts:
        if id(start) in state:
            continue
        path = [(start, iter(next_to(start)))]
        state[id(start)] = 1
        while path:
            node, rest = path[-1]
            nxt = next(rest, None)
            if nxt is None:
                state[id(node)] = 2
                path.pop()
            elif state.get(id(nxt)) == 1:
                return True
            elif id(nxt) not in state:
                state[id(nxt)] = 1
                path.append((nxt, iter(next_to(nxt))))
    return False


def _part(schema: Any) -> dict:
    """A subschema as an allOf part: true is {}, false is one nothing satisfies (the draw is then checked)."""
    if isinstance(schema, dict):
        return schema
    return {} if schema is not False else {"not": {}}


def _needed(key: str, depends: dict) -> list[str]:
    """The keys `key` brings along through dependentRequired, transitively."""
    out: list[str] = []
    todo = [key]
    while todo:
        for k in depends.get(todo.pop(), ()):
            if isinstance(k, str) and k != key and k not in out:
                out.append(k)
                todo.append(k)
    return out


def _singular(name: str | None) -> str | None:
    if name and name.endswith("s") and len(name) > 3:
        return name[:-1]
    return name


def value_for_schema(schema: dict, rng: random.Random, *, optional_probability: float = 0.5,
                     max_chars: int | None = None) -> Any:
    """One plausible value valid against `schema` (strict schemas: every property is required).

    max_chars: an answer cut by max_tokens sends only its first tokens, so a schema asking for a million
    items (minItems, minLength, minProperties) is generated only as far as could be sent: the value's
    start is the same, its arrays and strings stop growing about `max_chars` characters in.
    """
    return SchemaValues(schema, rng, optional_probability=optional_probability, max_chars=max_chars).value()


def small_object(rng: random.Random) -> dict:
    """A plausible small JSON object, for `json_object` mode with no schema."""
    keys = rng.sample(("answer", "summary", "status", "items", "score", "confidence"), 3)
    out: dict[str, Any] = {}
    for k in keys:
        if k == "items":
            out[k] = [rng.choice(_WORDS) for _ in range(rng.randint(1, 3))]
        elif k in ("score", "confidence"):
            out[k] = round(rng.random(), 2)
        else:
            out[k] = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
    return out


