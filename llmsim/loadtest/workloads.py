"""Workload sources: what each request sends, shared by every locustfile and the capacity test.

One source per run:
- synthetic (the default): a prompt of N tokens, N drawn from --prompt-tokens, built from words that are
  one token each in the model's encoding, so the count is exact; output lengths drawn from --max-tokens;
- dataset (--dataset FILE, or --prompts FILE.jsonl): JSONL lines with `prompt` or `messages` and an optional
  `output_tokens`, or ShareGPT-style conversations (a JSON list, or one per JSONL line);
- trace (--trace FILE): a Mooncake trace (`timestamp` ms, `input_length`, `output_length`, `hash_ids`)
  replayed open loop at its recorded times; equal hash ids give equal prefix blocks.
Two modifiers apply to the first two: --shared-prefix-tokens N / --prefix-groups G (each request starts
with one of G shared system prompts of N tokens) and --turns N / --think-time (sessions of N turns, each
turn carrying the whole history, the assistant's replies as the client received them).

Every prompt is new text (drawn from a per-user random stream) unless the workload says it is shared, so a
server's prefix cache hits only where the workload means it to. Option values stay strings (Locust ships
them to its workers with msgpack); a Workload is rebuilt from them in every process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tiktoken

from ..tokens import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, count_chat_tokens
from ..validation import finite_float, not_utf8
from .adapters import Prompt
from .prompts import _single_token_words

DEFAULT_BLOCK_TOKENS = 512
"""Mooncake's traces hash prompts in blocks of 512 tokens."""
EXACT_MODES = ("auto", "on", "off")
EXACT_FIELDS = ("ignore_eos", "min_tokens")
"""vLLM's sampling extensions that make the output exactly max_tokens long (llmsim honours them too)."""
EXACT_APIS = ("chat", "completions")
"""The adapters (ApiAdapter.name) whose APIs take them: Chat Completions and legacy Completions."""
SHAREGPT_USER = ("human", "user")
SHAREGPT_ASSISTANT = ("gpt", "chatgpt", "assistant", "bard", "bing", "model")


class WorkloadError(ValueError):
    """A workload option or file is unusable; str() is one line naming the option or the file and line."""


# --------------------------------------------------------------------------- length distributions

SPREAD_KINDS = ("constant", "normal", "lognormal", "uniform")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class Spread:
    """A number drawn per request: `N` (constant), `mean,stddev` (normal), `lognormal:mean,stddev`
    (the distribution's own mean and stddev, not those of its log) or `uniform:min,max`.

    Token counts are rounded and at least 1; seconds are at least 0 (a normal's tail below the
    floor is clamped, which raises its mean a little when stddev is large against the mean).
    """

    kind: str
    a: float
    """constant: the value; normal/lognormal: the mean; uniform: the minimum."""
    b: float = 0.0
    """normal/lognormal: the stddev; uniform: the maximum."""
    integer: bool = True

    @classmethod
    def parse(cls, text: str, *, integer: bool = True) -> Spread:
        """Parse a spec; ValueError with a one-line reason."""
        t = str(text).strip().replace(" ", "")
        kind, _, rest = t.rpartition(":")
        kind = kind.lower()
        numbers = rest.split(",")
        if not all(re.fullmatch(_NUMBER, n) for n in numbers) or len(numbers) > 2:
            raise ValueError(f"expected N, MEAN,STDDEV, lognormal:MEAN,STDDEV or uniform:MIN,MAX, got {text!r}")
        values = [float(n) for n in numbers]
        if not kind:
            kind = "constant" if len(values) == 1 else "normal"
        if kind not in SPREAD_KINDS:
            raise ValueError(f"unknown distribution {kind!r} in {text!r} (use {', '.join(SPREAD_KINDS)})")
        if (kind == "constant") != (len(values) == 1):
            raise ValueError(f"{kind} takes {'one number' if kind == 'constant' else 'two numbers'}, got {text!r}")
        a, b = values[0], values[1] if len(values) == 2 else 0.0
        unit = "tokens" if integer else "seconds"
        low = 1.0 if integer else 0.0
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"numbers must be finite, got {text!r}")
        if integer and kind in ("constant", "uniform") and not all(v == int(v) for v in values):
            raise ValueError(f"{unit} must be whole numbers, got {text!r}")
        if kind == "uniform":
            if a < low or b < a:
                raise ValueError(f"uniform needs {low:g} <= MIN <= MAX {unit}, got {text!r}")
        elif a < low or (kind == "lognormal" and a <= 0):
            raise ValueError(f"the {'value' if kind == 'constant' else 'mean'} must be at least {low:g} {unit}, "
                             f"got {text!r}")
        elif b < 0:
            raise ValueError(f"the stddev must be >= 0, got {text!r}")
        return cls(kind, a, b, integer)

    def sample(self, rng: random.Random) -> float:
        k = self.kind
        if k == "constant" or (k in ("normal", "lognormal") and self.b == 0):
            x = self.a
        elif k == "normal":
            x = rng.gauss(self.a, self.b)
        elif k == "lognormal":
            sigma2 = math.log1p((self.b / self.a) ** 2)
            x = rng.lognormvariate(math.log(self.a) - sigma2 / 2, math.sqrt(sigma2))
        elif self.integer:
            x = rng.randint(int(self.a), int(self.b))
        else:
            x = rng.uniform(self.a, self.b)
        return max(1, round(x)) if self.integer else max(0.0, x)

    def draw(self, rng: random.Random) -> int:
        """A token count (integer spreads)."""
        return int(self.sample(rng))

    @property
    def mean(self) -> float:
        """The requested mean (before rounding and the floor)."""
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" or (self.kind != "uniform" and self.b == 0) or \
            (self.kind == "uniform" and self.a == self.b)

    def __str__(self) -> str:
        def n(v: float) -> str:
            return f"{v:g}"
        if self.kind == "constant":
            return n(self.a)
        if self.kind == "normal":
            return f"{n(self.a)},{n(self.b)}"
        return f"{self.kind}:{n(self.a)},{n(self.b)}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": str(self), "distribution": self.kind}
        if self.kind == "uniform":
            d.update(min=self.a, max=self.b)
        elif self.kind == "constant":
            d["value"] = self.a
        else:
            d.update(mean=self.a, stddev=self.b)
        return d


def parse_tokens_spread(text: str) -> Spread:
    return Spread.parse(text, integer=True)


def parse_seconds_spread(text: str) -> Spread:
    return Spread.parse(text, integer=False)


# --------------------------------------------------------------------------- exact-length text

class Words:
    """Text of an exact token count: words that are one token each (with their leading space) in the
    encoding. BPE never merges across them (every encoding's pre-tokenizer splits before a space), so
    n words are n tokens without encoding the text again."""

    def __init__(self, enc: tiktoken.Encoding) -> None:
        self.enc = enc
        self.words = tuple(_single_token_words(enc))

    def text(self, n: int, rng: random.Random) -> str:
        return "".join(rng.choices(self.words, k=n)) if n > 0 else ""

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - one Words per encoding, kept for the run
    def block(self, seed: str, key: int, n: int) -> tuple[str, ...]:
        """The words of a named block (a trace's hash id): the same for the same seed and key everywhere."""
        return tuple(random.Random(f"{seed}/block/{key}").choices(self.words, k=n))


@functools.lru_cache(maxsize=8)
def words_for(enc: tiktoken.Encoding) -> Words:
    return Words(enc)


def message_tokens(enc: tiktoken.Encoding, role: str, content_tokens: int) -> int:
    """What one message adds to a chat prompt's count (tokens.count_chat_tokens, without the reply priming)."""
    return TOKENS_PER_MESSAGE + len(enc.encode_ordinary(role)) + content_tokens


def _messages_tokens(enc: tiktoken.Encoding, messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> int:
    return count_chat_tokens(messages, enc) - REPLY_PRIMING_TOKENS


# --------------------------------------------------------------------------- dataset files

@dataclass(frozen=True)
class Turn:
    """A later user turn of a dataset conversation (ShareGPT, multi-turn mode)."""

    text: str
    reply: str | None = None
    """The dataset's own answer: its token count is the turn's output length."""


@dataclass(frozen=True)
class Entry:
    """One dataset entry: the messages of its first request and what sets its output length."""

    messages: tuple[dict[str, Any], ...]
    output_tokens: int | None = None
    reply: str | None = None
    later: tuple[Turn, ...] = ()
    conversation: bool = False
    """A ShareGPT conversation: a session follows its own user turns (and ends with them)."""


@dataclass
class Dataset:
    path: str
    format: str
    """"jsonl", "sharegpt" (conversations, in a JSON list or one per line) or "mixed"."""
    entries: list[Entry]
    skipped: int = 0
    """ShareGPT conversations without a human turn that has text (left out, as vLLM's benchmark does)."""
    sha256: str = ""


def _check_local(path: str, option: str) -> Path:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path):
        raise WorkloadError(f"{path}: {option} reads local files only (download it first)")
    return Path(path)


def _read(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: {not_utf8(e)}") from None


def _json_lines(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield no, json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path}:{no}: invalid JSON ({e.msg})") from None


def _json_array(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """The elements of a top-level JSON array with the line each starts on."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = ws.match(text, 0).end()  # type: ignore[union-attr]
    if text[i:i + 1] != "[":
        raise WorkloadError(f"{path}:{line_of(i)}: expected a JSON list of conversations (a .json file) or one "
                            "JSON object per line (.jsonl)")
    i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
    if text[i:i + 1] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        yield line_of(i), obj
        i = ws.match(text, end).end()  # type: ignore[union-attr]
        c = text[i:i + 1]
        if c == "]":
            if text[i + 1:].strip():
                raise WorkloadError(f"{path}:{line_of(i + 1)}: text after the end of the JSON list")
            return
        if c != ",":
            raise WorkloadError(f"{path}:{line_of(i)}: invalid JSON (expected ',' or ']' between entries)")
        i = ws.match(text, i + 1).end()  # type: ignore[union-attr]


def _output_tokens(obj: dict[str, Any], where: str) -> int | None:
    v = obj.get("output_tokens")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise WorkloadError(f"{where}: \"output_tokens\" must be a whole number >= 1, got {json.dumps(v)}")
    return v


def _plain_entry(obj: Any, where: str) -> Entry:
    """A JSONL line: a string, {"prompt": ...}, {"messages": [...]} or a bare message list."""
    if isinstance(obj, str):
        if not obj:
            raise WorkloadError(f"{where}: empty prompt")
        return Entry(({"role": "user", "content": obj},))
    if isinstance(obj, dict) and "prompt" in obj and "messages" not in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise WorkloadError(f"{where}: \"prompt\" must be a non-empty string")
        return Entry(({"role": "user", "content": obj["prompt"]},), _output_tokens(obj, where))
    if isinstance(obj, dict) and "messages" in obj:
        msgs, out = obj["messages"], _output_tokens(obj, where)
        if not _is_messages(msgs):
            raise WorkloadError(f"{where}: \"messages\" must be a non-empty list of messages with a \"role\"")
        return Entry(tuple(msgs), out)
    if _is_messages(obj):
        return Entry(tuple(obj))
    raise WorkloadError(f"{where}: expected a string, {{\"prompt\": ...}}, {{\"messages\": [...]}}, a list of "
                        "messages with a \"role\", or a ShareGPT {\"conversations\": [...]}")


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                   for m in v)


def _sharegpt_entry(obj: dict[str, Any], where: str) -> Entry | None:
    """A ShareGPT conversation; None when it has no human turn with text (skipped)."""
    conv = obj.get("conversations", obj.get("conversation"))
    if not isinstance(conv, list):
        raise WorkloadError(f"{where}: \"conversations\" must be a list of {{\"from\": ..., \"value\": ...}} turns")
    system: list[dict[str, Any]] = []
    pairs: list[list[Any]] = []  # [user text, reply or None]
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or \
                not isinstance(turn.get("value"), str):
            raise WorkloadError(f"{where}: conversations[{k}] must be {{\"from\": \"human\"|\"gpt\", \"value\": "
                                "\"text\"}}")
        who, text = turn["from"].lower(), turn["value"]
        if who in SHAREGPT_USER:
            if text.strip():
                pairs.append([text, None])
        elif who in SHAREGPT_ASSISTANT:
            if pairs and pairs[-1][1] is None:
                pairs[-1][1] = text
        elif who == "system":
            if not pairs and text.strip():
                system.append({"role": "system", "content": text})
        else:
            raise WorkloadError(f"{where}: conversations[{k}].from is {turn['from']!r} (expected human, gpt or "
                                "system)")
    if not pairs:
        return None
    first, reply = pairs[0]
    return Entry((*system, {"role": "user", "content": first}), _output_tokens(obj, where), reply or None,
                 tuple(Turn(t, r or None) for t, r in pairs[1:]), conversation=True)


def load_dataset(path: str, option: str = "--dataset") -> Dataset:
    """A dataset file (JSONL, or a .json list); WorkloadError naming the file, the line and the reason."""
    p = _check_local(str(path), option)
    text, digest = _read(p)
    items = _json_array(text, p) if p.suffix.lower() == ".json" else _json_lines(text, p)
    entries: list[Entry] = []
    kinds: set[str] = set()
    skipped = 0
    for no, obj in items:
        where = f"{p}:{no}"
        if isinstance(obj, dict) and ("conversations" in obj or "conversation" in obj):
            kinds.add("sharegpt")
            entry = _sharegpt_entry(obj, where)
            if entry is None:
                skipped += 1
                continue
        else:
            kinds.add("jsonl")
            entry = _plain_entry(obj, where)
        entries.append(entry)
    if not entries:
        why = f" ({skipped} conversations without a human turn)" if skipped else ""
        raise WorkloadError(f"{p}: no prompts in the file{why}")
    fmt = kinds.pop() if len(kinds) == 1 else "mixed"
    return Dataset(str(p), fmt, entries, skipped, digest)


# --------------------------------------------------------------------------- Mooncake traces

@dataclass(frozen=True)
class TraceEntry:
    t_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()


@dataclass
class Trace:
    path: str
    entries: list[TraceEntry]
    """In time order."""
    sha256: str = ""

    @property
    def duration_s(self) -> float:
        return (self.entries[-1].t_ms - self.entries[0].t_ms) / 1000.0


def _whole(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def load_trace(path: str) -> Trace:
    """A Mooncake trace (JSONL): `timestamp` (ms), `input_length`, `output_length`, optional `hash_ids`."""
    p = _check_local(str(path), "--trace")
    text, digest = _read(p)
    entries: list[TraceEntry] = []
    for no, obj in _json_lines(text, p):
        where = f"{p}:{no}"
        if not isinstance(obj, dict):
            raise WorkloadError(f"{where}: expected an object with timestamp, input_length, output_length and "
                                "hash_ids")
        for key in ("timestamp", "input_length", "output_length"):
            if key not in obj:
                raise WorkloadError(f"{where}: \"{key}\" is missing")
        ts = obj["timestamp"]
        if finite_float(ts) is None or ts < 0:
            raise WorkloadError(f"{where}: \"timestamp\" must be milliseconds >= 0, got {json.dumps(ts)[:40]}")
        for key in ("input_length", "output_length"):
            if not _whole(obj[key], 1):
                raise WorkloadError(f"{where}: \"{key}\" must be a whole number >= 1, got {json.dumps(obj[key])}")
        ids = obj.get("hash_ids", [])
        if not isinstance(ids, list) or not all(_whole(h, 0) for h in ids):
            raise WorkloadError(f"{where}: \"hash_ids\" must be a list of whole numbers >= 0")
        entries.append(TraceEntry(float(ts), obj["input_length"], obj["output_length"], tuple(ids)))
    if not entries:
        raise WorkloadError(f"{p}: no requests in the trace")
    entries.sort(key=lambda e: e.t_ms)  # stable: simultaneous requests keep their order
    return Trace(str(p), entries, digest)


# --------------------------------------------------------------------------- what a request sends

@dataclass
class Session:
    """A multi-turn conversation in progress (one per user at a time)."""

    messages: list[dict[str, Any]]
    tokens: int
    """The client's count of `messages` (chat accounting without the reply priming)."""
    turn: int
    turns: int
    later: list[Turn]
    """The dataset's remaining user turns (ShareGPT), or [] when new ones are generated."""
    cache_after: tuple[int, ...] = ()
    alive: bool = True


@dataclass
class Work:
    """One request of the workload: its prompt, its output length and where it stands in a session or trace."""

    prompt: Prompt
    max_tokens: int
    turn: int = 0
    """1, 2, ... within a multi-turn session; 0 outside one."""
    think_s: float = 0.0
    """Seconds to wait before sending it (the think time between turns)."""
    intended: float | None = None
    """Trace replay: the wall-clock time it was due to be sent."""
    session: Session | None = None
    exact_sent: bool = False
    """Set by the user: the request went out with ignore_eos/min_tokens."""
    length_asked: bool = True
    """Whether max_tokens is a length the workload asks for (--max-tokens given, a dataset's or a trace's
    length), not only the default cap: --exact-output auto sends ignore_eos/min_tokens only then."""


@dataclass
class WorkloadSpec:
    """The resolved workload options (the same in every process)."""

    prompt_tokens: Spread
    max_tokens: Spread
    dataset: Dataset | None = None
    dataset_option: str = "--dataset"
    trace: Trace | None = None
    trace_speed: float = 1.0
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    shared_prefix_tokens: int = 0
    prefix_groups: int = 1
    turns: int = 1
    think_time: Spread = field(default_factory=lambda: Spread("constant", 0.0, integer=False))
    exact_output: str = "auto"
    seed: int = 0
    max_tokens_given: bool = True
    """--max-tokens was given (else its default is a cap, not a length the run asks for)."""

    @property
    def source(self) -> str:
        return "trace" if self.trace is not None else "dataset" if self.dataset is not None else "synthetic"


class Workload:
    """Builds each user's requests from a WorkloadSpec; one per process (LoadTestSettings.workload)."""

    def __init__(self, spec: WorkloadSpec, enc: tiktoken.Encoding) -> None:
        self.spec = spec
        self.enc = enc
        self.words = words_for(enc)
        rng = random.Random(f"{spec.seed}/prefixes")
        self.prefixes = [self.words.text(spec.shared_prefix_tokens, rng) for _ in range(spec.prefix_groups)] \
            if spec.shared_prefix_tokens else []
        self._entry_tokens: dict[int, int] = {}
        self._reply_tokens: dict[str, int] = {}
        self._role_tokens = {r: message_tokens(enc, r, 0) for r in ("system", "user", "assistant")}

    @property
    def trace(self) -> Trace | None:
        return self.spec.trace

    @property
    def multi_turn(self) -> bool:
        return self.spec.turns > 1

    def stream(self, rng: random.Random) -> WorkStream:
        return WorkStream(self, rng)

    def exact_fields(self, api: str, work: Work) -> dict[str, Any] | None:
        """ignore_eos and min_tokens for this request: where the API takes them, with --exact-output on, or
        auto when the workload asks for this length (not for the default --max-tokens cap)."""
        mode = self.spec.exact_output
        if mode == "off" or api not in EXACT_APIS or (mode == "auto" and not work.length_asked):
            return None
        return {"ignore_eos": True, "min_tokens": work.max_tokens}

    # ------------------------------------------------------------------ pieces

    def msg_tokens(self, role: str, content_tokens: int) -> int:
        base = self._role_tokens.get(role)
        return (base if base is not None else message_tokens(self.enc, role, 0)) + content_tokens

    def count(self, text: str) -> int:
        return len(self.enc.encode_ordinary(text))

    def entry_tokens(self, entry: Entry) -> int:
        key = id(entry)  # entries live as long as the workload
        n = self._entry_tokens.get(key)
        if n is None:
            n = self._entry_tokens[key] = _messages_tokens(self.enc, entry.messages)
        return n

    def reply_tokens(self, reply: str | None) -> int | None:
        """A dataset reply's length in tokens (what the request asks for); None without one."""
        if not reply:
            return None
        n = self._reply_tokens.get(reply)
        if n is None:
            n = self._reply_tokens[reply] = max(1, self.count(reply))
        return n

    def prefix(self, rng: random.Random) -> tuple[list[dict[str, Any]], int]:
        """The shared system prompt of one of the groups (or nothing), and its token count."""
        if not self.prefixes:
            return [], 0
        text = self.prefixes[rng.randrange(len(self.prefixes))]
        return [{"role": "system", "content": text}], self.msg_tokens("system", self.spec.shared_prefix_tokens)

    def sample_prompt(self) -> Prompt:
        """A typical first prompt (warm-up request, capacity prediction defaults)."""
        return WorkStream(self, random.Random(f"{self.spec.seed}/sample")).next().prompt

    def trace_prompt(self, entry: TraceEntry, rng: random.Random) -> Prompt:
        """input_length tokens: block i is hash_ids[i]'s text (the same wherever the id recurs), the rest new."""
        parts: list[str] = []
        left = entry.input_length
        block = self.spec.block_tokens
        seed = str(self.spec.seed)
        for h in entry.hash_ids:
            if left <= 0:
                break
            k = min(block, left)
            parts.append("".join(self.words.block(seed, h, block)[:k]))
            left -= k
        if left > 0:
            parts.append(self.words.text(left, rng))
        messages = ({"role": "user", "content": "".join(parts)},)
        return Prompt(messages, REPLY_PRIMING_TOKENS + self.msg_tokens("user", entry.input_length))

    def describe(self) -> dict[str, Any]:
        """The workload as the report states it (realised lengths are added from the run's figures)."""
        s = self.spec
        out: dict[str, Any] = {"source": s.source, "seed": s.seed}
        if s.trace is not None:
            t = s.trace
            out.update(file=t.path, format="mooncake", sha256=t.sha256, entries=len(t.entries),
                       trace={"speed": s.trace_speed, "block_tokens": s.block_tokens,
                              "duration_s": t.duration_s / s.trace_speed})
            out["prompt_tokens"] = out["max_tokens"] = "from the trace"
        else:
            if s.dataset is not None:
                d = s.dataset
                out.update(file=d.path, format=d.format, sha256=d.sha256, entries=len(d.entries),
                           skipped=d.skipped, option=s.dataset_option)
                out["prompt_tokens"] = "from the dataset"
                out["max_tokens"] = {**s.max_tokens.to_dict(), "applies_to": "entries without their own length"}
            else:
                out["prompt_tokens"] = s.prompt_tokens.to_dict()
                out["max_tokens"] = s.max_tokens.to_dict()
            out["shared_prefix"] = {"tokens": s.shared_prefix_tokens, "groups": s.prefix_groups} \
                if s.shared_prefix_tokens else None
            out["turns"] = s.turns
            out["think_time_s"] = s.think_time.to_dict() if s.turns > 1 else None
        out["exact_output"] = s.exact_output
        return out


class WorkStream:
    """One user's sequence of requests: draws lengths, builds prompts, carries sessions from turn to turn."""

    def __init__(self, workload: Workload, rng: random.Random) -> None:
        self.w = workload
        self.rng = rng
        self.session: Session | None = None

    def _max_tokens(self, own: int | None) -> tuple[int, bool]:
        """The request's output length and whether the workload asks for it (see Work.length_asked)."""
        if own is not None:
            return own, True
        return self.w.spec.max_tokens.draw(self.rng), self.w.spec.max_tokens_given

    def _entry(self) -> Entry:
        entries = self.w.spec.dataset.entries  # type: ignore[union-attr]
        return entries[self.rng.randrange(len(entries))]

    def next(self) -> Work:
        """The next request: the next turn of the session in progress, else a new one."""
        s = self.session
        if s is not None and s.alive and s.turn < s.turns:
            return self._next_turn(s)
        return self._first()

    def _first(self) -> Work:
        w, spec, rng = self.w, self.w.spec, self.rng
        messages, tokens = w.prefix(rng)
        cache_after: tuple[int, ...] = (0,) if messages else ()
        later: list[Turn] = []
        turns = spec.turns
        if spec.dataset is not None:
            entry = self._entry()
            messages += entry.messages
            tokens += w.entry_tokens(entry)
            max_tokens, asked = self._max_tokens(entry.output_tokens or w.reply_tokens(entry.reply))
            later = list(entry.later)
            if entry.conversation:
                turns = min(spec.turns, 1 + len(later))
        else:
            n = spec.prompt_tokens.draw(rng)
            messages.append({"role": "user", "content": w.words.text(n, rng)})
            tokens += w.msg_tokens("user", n)
            max_tokens, asked = self._max_tokens(None)
        if not w.multi_turn:
            return Work(Prompt(tuple(messages), tokens + REPLY_PRIMING_TOKENS, cache_after), max_tokens,
                        length_asked=asked)
        s = self.session = Session(messages, tokens, 1, turns, later, cache_after)
        return self._work(s, (max_tokens, asked), 0.0)

    def _work(self, s: Session, length: tuple[int, bool], think_s: float) -> Work:
        cache_after = (*s.cache_after, len(s.messages) - 1)
        prompt = Prompt(tuple(s.messages), s.tokens + REPLY_PRIMING_TOKENS, cache_after)
        return Work(prompt, length[0], turn=s.turn, think_s=think_s, session=s, length_asked=length[1])

    def _next_turn(self, s: Session) -> Work:
        w, rng = self.w, self.rng
        s.turn += 1
        if s.later:
            turn = s.later.pop(0)
            text, length = turn.text, self._max_tokens(w.reply_tokens(turn.reply))
            n = w.count(text)
        elif w.spec.dataset is not None:  # JSONL: the next turn says what another entry says
            entry = self._entry()
            content = entry.messages[-1].get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            n = w.count(text)
            length = self._max_tokens(entry.output_tokens)
        else:
            n = w.spec.prompt_tokens.draw(rng)
            text = w.words.text(n, rng)
            length = self._max_tokens(None)
        s.messages.append({"role": "user", "content": text})
        s.tokens += w.msg_tokens("user", n)
        return self._work(s, length, w.spec.think_time.sample(rng))

    def finished(self, work: Work, ok: bool, text: str | None) -> None:
        """The answer to `work`: a session goes on with the reply as the client received it, or ends."""
        s = work.session
        if s is None or s is not self.session:
            return
        if not ok or text is None or s.turn >= s.turns:
            s.alive = False
            return
        s.messages.append({"role": "assistant", "content": text})
        s.tokens += self.w.msg_tokens("assistant", self.w.count(text))


# --------------------------------------------------------------------------- exact output lengths

def refuses_exact_fields(status: int | None, message: str | None) -> bool:
    """Whether an error answer refuses ignore_eos/min_tokens (a 400 or 422 that names one of them)."""
    return status in (400, 422) and any(f in (message or "") for f in EXACT_FIELDS)


# --------------------------------------------------------------------------- trace replay

TRACE_LEAD_S = 0.2
"""The replay's clock starts this long after the first user asks for it, so the first send is not late
because of start-up work."""
TRACE_MAX_IN_FLIGHT = 1000
"""Requests one user may have outstanding in a replay; later ones wait, and the wait shows as lateness."""


class TraceReplay:
    """One process's share of a trace: entry i goes to process i mod `processes` (none to process -1), sent
    at t0 + (timestamp - first timestamp) / speed. Users of the process pull from one shared schedule."""

    def __init__(self, workload: Workload, process: int, processes: int, rng: random.Random,
                 start: float) -> None:
        trace = workload.spec.trace
        assert trace is not None
        self.workload = workload
        self.rng = rng
        self.t0 = start
        self.first_ms = trace.entries[0].t_ms
        self.speed = workload.spec.trace_speed
        self.entries = trace.entries[process::processes] if process >= 0 else []
        self._next = 0
        self.pending = 0
        self.sent = 0
        self.finished = False
        self.on_finished: list[Any] = []

    def intended(self, entry: TraceEntry) -> float:
        return self.t0 + (entry.t_ms - self.first_ms) / 1000.0 / self.speed

    def arrivals(self) -> Iterator[tuple[float, Work]]:
        """(intended send time, work) in time order, shared by every user that iterates it."""
        while self._next < len(self.entries):
            entry = self.entries[self._next]
            self._next += 1
            self.pending += 1
            t = self.intended(entry)
            yield t, Work(self.workload.trace_prompt(entry, self.rng), entry.output_length, intended=t)
        self._check()

    def done_one(self) -> None:
        self.pending -= 1
        self.sent += 1
        self._check()

    def _check(self) -> None:
        if not self.finished and self.pending == 0 and self._next >= len(self.entries):
            self.finished = True
            for callback in self.on_finished:
                callback()
