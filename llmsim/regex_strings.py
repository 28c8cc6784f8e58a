"""Strings that match a regular expression: the values a model gives for a JSON schema's `pattern`.

Walks the expression as Python's own parser reads it (the dialect of JSON
Schema patterns, ECMA-262, agrees with it on what schemas use: classes,
ranges, \\d \\w \\s, groups, alternation, counted repeats, anchors). Unbounded
repeats stop a few past their minimum, and a class like [^,] draws printable
ASCII. Anchors, word boundaries and look-arounds take no room; whether they
hold is left to the check below, and the positive look-aheads that open a
pattern (a password's `(?=.*[A-Z])(?=.*\\d)`) are met by writing a draw of
what each looks for over the string. A back-reference repeats what its
group drew. An expression Python cannot read (\\p{L}) gives None; every
string made is checked with re.search before it is returned, so a caller
never gets a string that does not match.
"""

from __future__ import annotations

import importlib
import random
import re
import string
from functools import lru_cache
from typing import Any

_c: Any = None
_p: Any = None
try:  # the parser the re module compiles with (private, so an unknown one leaves patterns unsupported)
    _c, _p = importlib.import_module("re._constants"), importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - a Python whose re has no such modules
    pass

__all__ = ["string_for_pattern"]

EXTRA_REPEATS = 3
"""An unbounded repeat (`*`, `+`, `{n,}`) is drawn between its minimum and this many more, unless a length
is asked for."""
MAX_CHARS = 4000
"""A drawn string longer than this is not used (a pattern such as `a{100000}`)."""
_PRINTABLE = tuple(c for c in string.printable if c not in "\t\n\r\x0b\x0c")
_WORD = string.ascii_letters + string.digits + "_"
_CATEGORIES: dict[Any, str] = {}
if _c is not None:
    _CATEGORIES = {_c.CATEGORY_DIGIT: string.digits, _c.CATEGORY_WORD: _WORD, _c.CATEGORY_SPACE: " "}


class _Unsupported(Exception):
    """A construct this module does not draw (a conditional group), or a string too long."""


@lru_cache(maxsize=256)
def _parsed(pattern: str) -> Any:
    """The parse tree of `pattern`, or None when Python cannot read it."""
    if _p is None:
        return None
    try:
        re.compile(pattern)
        return _p.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None


def string_for_pattern(pattern: str, rng: random.Random, *, min_length: int = 0,
                       max_length: int | None = None, tries: int = 20) -> str | None:
    """A string that re.search finds `pattern` in, within the lengths, or None if none was drawn.

    With no lengths asked, unbounded repeats run a few past their minimum. With lengths, a length is
    chosen first (within what the pattern can make) and shared out over the pattern's parts."""
    tree = _parsed(pattern)
    if tree is None:
        return None
    try:
        lo, hi = _span(tree)
    except (_Unsupported, RecursionError):
        return None
    limit = MAX_CHARS if max_length is None else min(max_length, MAX_CHARS)
    # Not anchored at its end, a match may be followed by anything: a string too short is padded.
    open_end = not (tree and tree[-1][0] is _c.AT and tree[-1][1] in (_c.AT_END, _c.AT_END_STRING))
    top = int(min(limit, hi))
    bottom = max(lo, min(min_length, top))
    if bottom > top or (min_length > top and not open_end):
        return None
    targeted = min_length > lo or limit < hi
    needs = _look_aheads(tree)
    for _ in range(tries):
        want = rng.randint(bottom, min(top, bottom + 2 * EXTRA_REPEATS)) if targeted else None
        try:
            text = "".join(_draw(tree, rng, want))
        except (_Unsupported, RecursionError):
            return None
        if open_end and len(text) < min_length:
            text += "".join(rng.choice(string.ascii_lowercase) for _ in range(min_length - len(text)))
        if needs and re.search(pattern, text) is None:
            try:
                text = _met_look_aheads(text, needs, rng)
            except (_Unsupported, RecursionError):
                return None
        if min_length <= len(text) <= limit and re.search(pattern, text) is not None:
            return text
    return None


_INF = float("inf")


def _is_repeat(op: Any) -> bool:
    return op is _c.MAX_REPEAT or op is _c.MIN_REPEAT or op is getattr(_c, "POSSESSIVE_REPEAT", None)


def _span(items: Any) -> tuple[int, float]:
    """The shortest and longest strings a sequence makes (longest may be infinite)."""
    lo, hi = 0, 0.0
    for op, av in items:
        a, b = _node_span(op, av)
        lo, hi = lo + a, hi + b
    return lo, hi


def _node_span(op: Any, av: Any) -> tuple[int, float]:
    if op is _c.LITERAL or op is _c.NOT_LITERAL or op is _c.ANY or op is _c.IN:
        return 1, 1
    if op is _c.AT or op is _c.ASSERT or op is _c.ASSERT_NOT:
        # anchors, word boundaries and look-arounds are zero-width; the final re.search judges them
        return 0, 0
    if op is _c.GROUPREF:  # as long as what its group drew: not known ahead, so no length is aimed at it
        return 0, _INF
    if op is _c.BRANCH:
        spans = [_span(b) for b in av[1]]
        return min(a for a, _ in spans), max(b for _, b in spans)
    if op is _c.SUBPATTERN:
        return _span(av[-1])
    if op is getattr(_c, "ATOMIC_GROUP", None):
        return _span(av)
    if _is_repeat(op):
        lo, hi, item = av
        if lo > MAX_CHARS:
            raise _Unsupported("repeat")
        a, b = _span(item)
        return lo * a, (_INF if hi is _c.MAXREPEAT and b else hi * b)
    raise _Unsupported(str(op))  # GROUPREF_EXISTS, ...


def _share(spans: list[tuple[int, float]], want: int, rng: random.Random) -> list[int]:
    """Lengths for consecutive parts, each within its span, adding up to `want` where they can."""
    got = [a for a, _ in spans]
    spare = want - sum(got)
    room = [i for i, (a, b) in enumerate(spans) if b > a]
    while spare > 0 and room:
        i = rng.choice(room)
        got[i] += 1
        spare -= 1
        if got[i] >= spans[i][1]:
            room.remove(i)
    return got


def _draw(items: Any, rng: random.Random, want: int | None, groups: dict[int, str] | None = None) -> list[str]:
    """The characters of a sequence; `want`: the length to aim at (None: as it comes). `groups` keeps what
    each numbered group drew, for the back-references after it."""
    groups = {} if groups is None else groups
    wants: list[int | None] = [None] * len(items)
    if want is not None:
        wants = list(_share([_node_span(op, av) for op, av in items], want, rng))
    out: list[str] = []
    for (op, av), part in zip(items, wants, strict=True):
        if op is _c.LITERAL:
            out.append(chr(av))
        elif op is _c.NOT_LITERAL:
            out.append(rng.choice([c for c in _PRINTABLE if ord(c) != av]))
        elif op is _c.ANY:
            out.append(rng.choice(string.ascii_letters))
        elif op is _c.IN:
            out.append(_draw_class(av, rng))
        elif op is _c.BRANCH:
            branches = av[1]
            if part is not None:  # a branch that can make this length, if any can
                fits = [b for b in branches if (span := _span(b))[0] <= part <= span[1]]
                branches = fits or branches
            out += _draw(rng.choice(branches), rng, part, groups)
        elif op is _c.SUBPATTERN:
            drawn = _draw(av[-1], rng, part, groups)
            if av[0] is not None:
                groups[av[0]] = "".join(drawn)
            out += drawn
        elif op is getattr(_c, "ATOMIC_GROUP", None):
            out += _draw(av, rng, part, groups)
        elif _is_repeat(op):
            out += _draw_repeat(av, rng, part, groups)
        elif op is _c.GROUPREF:
            out += groups.get(av, "")  # a group not drawn (another branch) matches nothing: the check judges
        elif op is _c.AT or op is _c.ASSERT or op is _c.ASSERT_NOT:
            pass  # zero-width: a look-ahead at the start is met afterwards (_met_look_aheads)
        else:
            raise _Unsupported(str(op))
        if len(out) > MAX_CHARS:
            raise _Unsupported("too long")
    return out


def _look_aheads(tree: Any) -> list[tuple[bool, Any]]:
    """The positive look-aheads before the pattern's first character, each as (anywhere, what it looks for):
    `(?=.*[A-Z])` looks for [A-Z] anywhere, `(?=ab)` for ab at the start."""
    out: list[tuple[bool, Any]] = []
    for op, av in tree:
        if op is _c.AT or op is _c.ASSERT_NOT:
            continue
        if op is not _c.ASSERT:
            break
        direction, sub = av
        if direction != 1 or not sub:
            continue
        head_op, head_av = sub[0]
        if _is_repeat(head_op) and head_av[0] == 0 and len(head_av[2]) == 1 \
                and head_av[2][0][0] in (_c.ANY, _c.IN):
            out.append((True, list(sub)[1:]))  # a .* or [^x]* first: what follows may be anywhere
        else:
            out.append((False, list(sub)))
    return out


def _met_look_aheads(text: str, needs: list[tuple[bool, Any]], rng: random.Random) -> str:
    r"""`text` with a draw of each look-ahead's target written over it (at a place of its own when it may be
    anywhere), its length kept: `Password1` for ^(?=.*[A-Z])(?=.*\d)\w{8,}$ drawn as `passwordx`."""
    chars, taken = list(text), set[int]()
    for anywhere, target in needs:
        piece = "".join(_draw(target, rng, None))
        if not piece or len(piece) > len(chars):
            continue
        at = 0
        for _ in range(8 if anywhere else 0):  # a place no earlier target took, if one comes up
            at = rng.randrange(len(chars) - len(piece) + 1)
            if taken.isdisjoint(range(at, at + len(piece))):
                break
        chars[at:at + len(piece)] = piece
        taken.update(range(at, at + len(piece)))
    return "".join(chars)


def _draw_repeat(av: Any, rng: random.Random, want: int | None, groups: dict[int, str]) -> list[str]:
    lo, hi, item = av
    if lo > MAX_CHARS:
        raise _Unsupported("repeat")
    a, b = _span(item)
    top = lo + EXTRA_REPEATS if hi is _c.MAXREPEAT else min(hi, lo + EXTRA_REPEATS)
    if want is None:
        n = rng.randint(lo, max(lo, top))
    else:  # as many items as the length needs, each aiming at its share
        per = (a + b) / 2 if b < _INF else max(a, 1)
        n = round(want / per) if per else lo
        n = max(lo, n if hi is _c.MAXREPEAT else min(hi, n))
    shares: list[int | None] = [None] * n
    if want is not None and n:
        shares = list(_share([(a, b)] * n, want, rng))
    out: list[str] = []
    for share in shares:
        out += _draw(item, rng, share, groups)
        if len(out) > MAX_CHARS:
            raise _Unsupported("too long")
    return out


def _draw_class(items: list, rng: random.Random) -> str:
    """One character of a class: [a-z0-9_], \\d, [^,], ..."""
    negate = bool(items) and items[0][0] is _c.NEGATE
    allowed: list[str] = []
    for op, av in items[1:] if negate else items:
        if op is _c.LITERAL:
            allowed.append(chr(av))
        elif op is _c.RANGE:
            lo, hi = av
            allowed += [chr(c) for c in range(lo, min(hi, lo + 1023) + 1)]
        elif op is _c.CATEGORY and av in _CATEGORIES:
            allowed += _CATEGORIES[av]
        elif op is _c.CATEGORY:  # \D \W \S: printable characters outside the category
            inside = next((v for k, v in _CATEGORIES.items() if k.name == av.name.replace("NOT_", "")), "")
            allowed += [c for c in _PRINTABLE if c not in inside]
        else:
            raise _Unsupported(str(op))
    if negate:
        banned = set(allowed)
        allowed = [c for c in _PRINTABLE if c not in banned]
    if not allowed:
        raise _Unsupported("empty class")
    return rng.choice(allowed)
