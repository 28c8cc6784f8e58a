"""Generated tool arguments and structured outputs validate against their JSON schemas."""

import json
import random

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, Field

from llmsim.schema_values import small_object, value_for_schema
from llmsim.toolcalls import schema_problem, strict_problem


class Address(BaseModel):
    street: str
    zip_code: str = Field(pattern=r"^\d+$", min_length=5, max_length=5)


class Order(BaseModel):
    id: int = Field(ge=1, le=999)
    price: float = Field(gt=0, lt=10)
    quantity: int = Field(multiple_of=5, ge=5, le=50)
    status: str = Field(json_schema_extra={"enum": ["open", "closed"]})
    tags: list[str] = Field(min_length=2, max_length=4)
    address: Address
    note: str | None = None
    history: list[Address] = []


SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
     "required": ["city", "unit"], "additionalProperties": False},
    {"type": "object", "properties": {
        "when": {"type": "string", "format": "date-time"}, "day": {"type": "string", "format": "date"},
        "mail": {"type": "string", "format": "email"}, "id": {"type": "string", "format": "uuid"},
        "ip": {"type": "string", "format": "ipv4"}, "link": {"type": "string", "format": "uri"},
        "code": {"type": "string", "minLength": 8, "maxLength": 10},
        "n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
        "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.75},
        "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
        "ids": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 3}, "uniqueItems": True,
                "minItems": 3},
        "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 2},
        "maybe": {"type": ["string", "null"]}, "fixed": {"const": 42},
        "choice": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "minimum": 7}]},
        "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                           {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}},
     "required": ["when", "day", "mail", "id", "ip", "link", "code", "n", "ratio", "flags", "ids", "pair", "maybe",
                  "fixed", "choice", "both"]},
    {"$defs": {"node": {"type": "object", "properties": {"name": {"type": "string"},
                                                         "children": {"type": "array",
                                                                      "items": {"$ref": "#/$defs/node"}}},
                        "required": ["name", "children"]}},
     "$ref": "#/$defs/node"},
    Order.model_json_schema(),
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["enum", "formats-and-bounds", "recursive-ref", "pydantic"])
def test_values_validate_across_seeds(schema):
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    for seed in range(200):
        value = value_for_schema(schema, random.Random(seed))
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (seed, value, errors)


def test_pydantic_model_parses_the_value():
    for seed in range(50):
        order = Order.model_validate(value_for_schema(Order.model_json_schema(), random.Random(seed),
                                                      optional_probability=1.0))
        assert 1 <= order.id <= 999 and order.quantity % 5 == 0 and len(order.address.zip_code) == 5


def test_values_are_plausible_and_seeded():
    schema = SCHEMAS[0]
    values = [value_for_schema(schema, random.Random(s)) for s in range(30)]
    assert all(", " in v["city"] for v in values)  # a city for `city`, not random letters
    assert {v["unit"] for v in values} == {"c", "f"}
    assert value_for_schema(schema, random.Random(7)) == value_for_schema(schema, random.Random(7))


def test_small_object_is_an_object_of_three_keys():
    obj = small_object(random.Random(1))
    assert isinstance(obj, dict) and len(obj) == 3


def test_schema_and_strict_problems_are_named():
    assert schema_problem({"type": "objekt"}) is not None
    assert schema_problem([]) == "must be a JSON schema object"
    assert schema_problem(SCHEMAS[1]) is None
    assert "additionalProperties" in strict_problem({"type": "object", "properties": {"a": {"type": "string"}},
                                                     "required": ["a"]})
    assert "Missing 'b'" in strict_problem({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"],
                                            "additionalProperties": False})
    nested = {"type": "object", "properties": {"x": {"type": "object", "properties": {}}}, "required": ["x"],
              "additionalProperties": False}
    assert "properties/x" in strict_problem(nested)


SELF_REFERENCING = {
    "allOf back to the root": {"type": "object", "properties": {"note": {"type": "string"}}, "allOf": [{"$ref": "#"}]},
    "a required child of its own kind": {"type": "object", "properties": {"child": {"$ref": "#"}},
                                         "required": ["child"]},
    "a tree through $defs": {"$defs": {"node": {"type": "object", "required": ["kids"], "properties": {
        "kids": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"},
}


@pytest.mark.parametrize("name", sorted(SELF_REFERENCING))
def test_schemas_that_refer_to_themselves_give_a_value(name):
    """A valid schema may refer to itself with no finite instance: a bounded value, never a RecursionError."""
    schema = SELF_REFERENCING[name]
    Draft202012Validator.check_schema(schema)
    value = value_for_schema(schema, random.Random(1), optional_probability=1.0)
    assert isinstance(value, dict)
    if name == "allOf back to the root":  # satisfiable, by what the schema says without its loop
        plain = {k: v for k, v in schema.items() if k != "allOf"}  # (jsonschema itself recurses on the loop)
        assert not list(Draft202012Validator(plain).iter_errors(value))


@pytest.mark.parametrize("schema, cut", [
    ({"type": "array", "items": {"type": "integer"}, "minItems": 2_000_000}, lambda v, n: v[:len(n)]),
    ({"type": "string", "minLength": 5_000_000}, lambda v, n: v[:len(n)]),
    ({"type": "object", "minProperties": 1_000_000}, lambda v, n: dict(list(v.items())[:len(n)])),
])
def test_a_value_is_generated_only_as_far_as_max_tokens_could_send(schema, cut):
    """With max_chars, a schema asking for millions of items stops near that many characters, and what it
    gives is the start of the full value (the same draws in the same order)."""
    bounded = value_for_schema(schema, random.Random(5), max_chars=400)
    assert 300 <= len(json.dumps(bounded)) <= 500
    small = dict(schema)
    for key in ("minItems", "minLength", "minProperties"):
        if key in small:
            small[key] = 3000  # enough to pass the budget, cheap to make in full
    full = value_for_schema(small, random.Random(5))
    assert cut(full, bounded) == bounded


def test_a_schema_that_doubles_at_every_level_is_bounded():
    """{l: #, r: #}, both required: 2**48 values to depth 48. A bounded number of them, at once."""
    import time as _time

    schema = {"type": "object", "properties": {"l": {"$ref": "#"}, "r": {"$ref": "#"}}, "required": ["l", "r"]}
    started = _time.process_time()
    value = value_for_schema(schema, random.Random(3))
    assert isinstance(value, dict) and set(value) == {"l", "r"}
    assert _time.process_time() - started < 10  # about 0.1 s; unbounded, it never returns
    assert len(json.dumps(value)) < 20_000 * 12


@pytest.mark.parametrize("schema", [
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.1},
    {"type": "number", "minimum": 0.101, "maximum": 0.119},
    {"type": "number", "minimum": 5, "exclusiveMaximum": 5.004},
    {"type": "integer", "multipleOf": 2.5},
    {"type": "integer", "multipleOf": 0.5, "exclusiveMinimum": 3, "maximum": 6},
    {"type": "number", "multipleOf": 0.25, "exclusiveMinimum": 0.25, "maximum": 1.5},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False, "minItems": 1},
])
def test_bounds_hold_after_rounding(schema):
    validator = Draft202012Validator(schema)
    for seed in range(200):
        value = value_for_schema(schema, random.Random(seed))
        assert not list(validator.iter_errors(value)), (seed, value)


def test_required_keys_come_in_the_schemas_order():
    """Required keys a schema does not describe: in its order, so a seed gives the same JSON in every process."""
    schema = {"type": "object", "required": ["zeta", "alpha", "mid", "beta"]}
    assert list(value_for_schema(schema, random.Random(1))) == ["zeta", "alpha", "mid", "beta"]


@pytest.mark.parametrize("schema", [
    {"type": "number", "multipleOf": 1e-300, "minimum": 1e10},
    {"type": "number", "minimum": 10**400},
    {"type": "integer", "maximum": 10**400, "multipleOf": 10**400},
    {"type": "number", "multipleOf": 1e308, "maximum": 1e308},
])
def test_extreme_numbers_in_a_schema_give_a_number_not_an_error(schema):
    """Bounds and steps whose arithmetic overflows a float: a number still comes back, never an OverflowError."""
    assert isinstance(value_for_schema(schema, random.Random(1)), (int, float))


OVERLAPPING_ONE_OF = [
    {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    {"type": "object", "properties": {"v": {"oneOf": [{"type": "string", "maxLength": 5},
                                                      {"type": "string", "minLength": 3}]}}, "required": ["v"]},
    {"$defs": {"n": {"type": "integer", "minimum": 0, "maximum": 10}},
     "type": "array", "minItems": 3, "items": {"oneOf": [{"$ref": "#/$defs/n"}, {"type": "integer", "minimum": 5}]}},
]


@pytest.mark.parametrize("schema", OVERLAPPING_ONE_OF, ids=["int-or-number", "short-or-long", "ref-overlap"])
def test_one_of_gives_a_value_exactly_one_branch_accepts(schema):
    """{type: integer} and {type: number} both accept 3: a oneOf of them needs a number that is not whole."""
    validator = Draft202012Validator(schema)
    for seed in range(200):
        value = value_for_schema(schema, random.Random(seed))
        assert validator.is_valid(value), (seed, value)


PATTERNS = [r"^[A-Z]{2}-\d{3,}(x|yz)?$", r"^\+?[1-9]\d{1,14}$", r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$",
            r"^#[0-9a-fA-F]{6}$", r"[^,]+", r"^\w+\s\w+$", r"^\d{5}(-\d{4})?$", r"^[^\W\d]+$", r"^\D\S\W$",
            r"^(?:[01]\d|2[0-3]):[0-5]\d$", r"^v\d+\.\d+\.\d+(-[a-z]+\.\d+)?$", r"^[A-Z][a-z]*( [A-Z][a-z]*)*$",
            r"\bid-\d+\b", r"^\w+\b-\d+$", r"^(?=.*[A-Z])(?=.*\d)[A-Za-z\d]{8,}$",
            r"^(?=.*[a-z])(?=.*[A-Z])(?=.*\d)(?=.*[@$!%*?&])[A-Za-z\d@$!%*?&]{8,20}$", r"^(?!.*\s).{6,}$",
            r"^(?=ab)\w+$", r"^(?!test)\w{4}$", r"^(\w{2})\d+\1$", r"(?P<q>[\"'])\w+(?P=q)"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pattern_gets_a_string_it_matches(pattern):
    import re

    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}, "required": ["code"]}
    validator = Draft202012Validator(schema)
    values = {value_for_schema(schema, random.Random(seed))["code"] for seed in range(100)}
    assert all(re.search(pattern, v) for v in values), values
    assert len(values) > 3 and all(validator.is_valid({"code": v}) for v in values)


@pytest.mark.parametrize("pattern,lo,hi", [(r"^[a-z]+[0-9]*$", 12, 14), (r"^[A-Z]{2}\d+$", 10, 10),
                                           (r"^(ab|c)+$", 7, 7), (r"abc", 10, 12), (r"^\d{3}", 8, None)])
def test_a_pattern_with_lengths_gets_both(pattern, lo, hi):
    """Lengths are shared out over the pattern's parts; an unanchored end is padded."""
    schema = {"type": "string", "pattern": pattern, "minLength": lo, **({"maxLength": hi} if hi else {})}
    validator = Draft202012Validator(schema)
    for seed in range(50):
        v = value_for_schema(schema, random.Random(seed))
        assert validator.is_valid(v), v


@pytest.mark.parametrize("pattern", [r"(?=a)b", r"(a)?(?(1)b|c)", r"\p{L}+", r"a{100000}", r"(?<=x)y", r"\Bx"])
def test_a_pattern_that_cannot_be_drawn_gives_a_plain_string(pattern):
    from llmsim.regex_strings import string_for_pattern

    rng = random.Random(3)
    assert string_for_pattern(pattern, rng) is None
    assert isinstance(value_for_schema({"type": "string", "pattern": pattern}, rng), str)


BEYOND_STRICT = {
    "not": {"type": "object", "required": ["code", "n"], "properties": {
        "code": {"type": "string", "not": {"enum": ["alpha", "river", "stone", "lumen"]}},
        "n": {"type": "integer", "minimum": 0, "maximum": 3, "not": {"const": 2}}}},
    "if-then-else": {"type": "object", "required": ["country"], "properties": {
        "country": {"enum": ["US", "CA"]}, "zip": {"type": "string"}},
        "if": {"properties": {"country": {"const": "US"}}},
        "then": {"properties": {"zip": {"pattern": r"^\d{5}$"}}, "required": ["zip"]},
        "else": {"properties": {"zip": {"pattern": r"^[A-Z]\d[A-Z] \d[A-Z]\d$"}}, "required": ["zip"]}},
    "contains": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                 "contains": {"minimum": 90}, "minContains": 2},
    "contains-at-most": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                         "contains": {"const": 7}, "maxContains": 1, "minItems": 1},
    "maxProperties": {"type": "object", "required": ["a"], "maxProperties": 2,
                      "properties": {k: {"type": "string"} for k in "abcdefgh"}},
    "dependentRequired": {"type": "object", "maxProperties": 3, "dependentRequired": {"card": ["billing", "cvv"]},
                          "properties": {k: {"type": "string"} for k in ("card", "billing", "cvv", "memo")}},
    "dependentSchemas": {"type": "object", "properties": {"card": {"type": "string"}, "zip": {"type": "string"}},
                         "dependentSchemas": {"card": {"properties": {"zip": {"pattern": r"^\d{5}$"}},
                                                      "required": ["zip"]}}},
    "patternProperties": {"type": "object", "patternProperties": {"^x-[a-z]+$": {"type": "integer"}},
                          "additionalProperties": False, "minProperties": 3},
    "propertyNames": {"type": "object", "propertyNames": {"pattern": "^[a-z]{3,6}$"}, "minProperties": 2,
                      "additionalProperties": {"type": "number"}},
    "allOf-bounds": {"allOf": [{"type": "integer", "minimum": 0, "maximum": 100},
                               {"type": "number", "minimum": 95}]},
    "allOf-two-nots": {"allOf": [{"type": "integer", "minimum": 0, "maximum": 9, "not": {"const": 1}},
                                 {"not": {"const": 2}}]},
    "allOf-two-ifs": {"type": "object", "required": ["a", "b"], "allOf": [
        {"if": {"properties": {"a": {"const": 1}}},
         "then": {"properties": {"c": {"minimum": 10, "maximum": 12}}, "required": ["c"]}},
        {"if": {"properties": {"b": {"const": 1}}},
         "then": {"properties": {"c": {"minimum": 11, "maximum": 20}}, "required": ["c"]}}],
        "properties": {"a": {"enum": [1, 2]}, "b": {"enum": [1, 2]}, "c": {"type": "integer"}}},
    "allOf-dependentSchemas-twice": {"type": "object", "allOf": [
        {"dependentSchemas": {"a": {"properties": {"b": {"minimum": 5}}}}},
        {"dependentSchemas": {"a": {"properties": {"b": {"maximum": 6}}}}}],
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}},
    "allOf-property-twice": {"allOf": [
        {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}, "required": ["size"]},
        {"properties": {"size": {"maximum": 3}}}]},
}


@pytest.mark.parametrize("name", list(BEYOND_STRICT))
def test_keywords_beyond_strict_mode_hold(name):
    """not, if/then/else, contains, maxProperties, dependentRequired, patternProperties, propertyNames, and
    allOf parts that both bound one value: every draw validates."""
    schema = BEYOND_STRICT[name]
    validator = Draft202012Validator(schema)
    values = [value_for_schema(schema, random.Random(seed)) for seed in range(200)]
    bad = [v for v in values if not validator.is_valid(v)]
    assert not bad, bad[:3]
    assert len({json.dumps(v, sort_keys=True) for v in values}) > 2  # drawn, not one fixed answer


def test_if_then_else_draws_both_branches_and_a_dependency_brings_its_keys():
    cond = BEYOND_STRICT["if-then-else"]
    countries = {value_for_schema(cond, random.Random(seed))["country"] for seed in range(100)}
    assert countries == {"US", "CA"}
    deps = BEYOND_STRICT["dependentRequired"]
    with_card = [v for v in (value_for_schema(deps, random.Random(s)) for s in range(200)) if "card" in v]
    assert with_card and all({"billing", "cvv"} <= v.keys() and len(v) <= 3 for v in with_card)
    shaped = BEYOND_STRICT["dependentSchemas"]
    draws = [value_for_schema(shaped, random.Random(s)) for s in range(100)]
    assert any("card" in v for v in draws) and any("card" not in v for v in draws)


@pytest.mark.parametrize("schema", [
    {"if": {"$ref": "#"}, "then": {"$ref": "#"}},
    {"$defs": {"a": {"not": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"},
    {"type": "object", "required": ["a"],
     "properties": {"a": {"oneOf": [{"$ref": "#/properties/a"}, {"type": "integer"}, {"type": "number"}]}}},
], ids=["if-self", "not-self", "oneOf-self"])
def test_a_schema_that_checks_itself_forever_gives_a_value_without_checking(schema, capfd):
    """Checking a draw against {if: {$ref: "#"}} never ends (jsonschema recurses to Python's limit, and its
    Rust registry panics there): such a schema's draws stand unchecked, at once."""
    import time

    t0 = time.perf_counter()
    for seed in range(20):
        value_for_schema(schema, random.Random(seed))
    assert time.perf_counter() - t0 < 2.0
    assert "panicked" not in capfd.readouterr().err


def test_refs_that_reach_a_smaller_part_of_the_value_are_still_checked():
    """A tree ($ref under items) or a repeated $ref is no loop: its oneOf is still checked."""
    from llmsim.schema_values import _loops_in_place

    tree = {"$defs": {"node": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
        "v": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}, "required": ["v"]}}, "$ref": "#/$defs/node"}
    assert not _loops_in_place(tree)
    assert not _loops_in_place({"allOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/a"}], "$defs": {"a": {}}})
    validator = Draft202012Validator(tree)
    assert all(validator.is_valid(value_for_schema(tree, random.Random(s))) for s in range(100))
