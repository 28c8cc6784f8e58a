"""OpenAI legacy Completions (`POST /v1/completions`): a text prompt in, text out.

What `vllm bench serve` and other tools that predate chat send by default. The
prompt is plain text (or token ids) counted without chat framing; the answer
streams as `text_completion` chunks, one per token, then a chunk with the
`finish_reason`, an optional usage chunk and `data: [DONE]`.

One prompt per request: a list of several prompts is refused with a 400
(send one request per prompt), so every stream keeps the timing of one
sequence. `suffix` (insertion) is refused as OpenAI refuses it for its current
models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..api import Api, StreamEncoder, json_str
from ..engine import Generation, Request, new_id
from ..errors import ApiError, invalid
from ..fields import MISSING, get_bool, get_int, get_number, get_stop, get_str, json_type, wrong_type
from ..logprobs import legacy_logprobs
from ..stream import Block
from .chat import length_controls, stream_options

DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default when a Completions request sets no max_tokens."""
DONE = b"data: [DONE]\n\n"
HEADERS_NOW = b": \n\n"
"""An SSE comment: sends the headers at once (the API has no opening chunk; clients ignore comments)."""
PROMPT_TYPES = "a string, an array of strings, an array of integers, or an array of arrays of integers"


def parse_prompt(body: dict) -> tuple[str, list[int] | None]:
    """(prompt text, token ids or None): one prompt, as a string or token ids, alone or in a one-item list."""
    value = body.get("prompt", MISSING)
    if value is MISSING or value is None:
        return "", None  # OpenAI starts a new document; counted as an empty prompt
    if isinstance(value, str):
        return value, None
    if not isinstance(value, list):
        raise wrong_type("prompt", PROMPT_TYPES, value)
    if not value:
        raise invalid("Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an empty "
                      "array instead.", param="prompt", code="empty_array")
    if all(_is_token(v) for v in value):
        return "", list(value)
    if all(isinstance(v, str) for v in value) or all(isinstance(v, list) for v in value):
        if len(value) > 1:
            raise invalid(f"llmsim serves one prompt per request: 'prompt' holds {len(value)} prompts. Send "
                          f"{len(value)} requests instead.", param="prompt", code="invalid_value")
        only = value[0]
        if isinstance(only, str):
            return only, None
        if not only:
            raise invalid("Invalid 'prompt[0]': empty array. Expected an array of token ids with minimum length 1.",
                          param="prompt[0]", code="empty_array")
        for j, v in enumerate(only):
            if not _is_token(v):
                raise wrong_type(f"prompt[0][{j}]", "a non-negative integer (a token id)", v)
        return "", list(only)
    bad = next((i for i, v in enumerate(value) if not isinstance(v, type(value[0])) or
                (isinstance(v, int) and not _is_token(v))), 0)
    raise invalid(f"Invalid type for 'prompt[{bad}]': expected {PROMPT_TYPES} (one kind throughout), but got "
                  f"{json_type(value[bad])} instead.", param=f"prompt[{bad}]", code="invalid_type")


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_completions_request(body: dict) -> Request:
    """Validate a legacy Completions body as OpenAI does; 400 naming the field otherwise."""
    model = get_str(body, "model", required=True, nonempty=True) or ""
    text, ids = parse_prompt(body)
    if body.get("suffix") not in (None, ""):
        get_str(body, "suffix")  # a wrong type is named as such first
        raise invalid("Unrecognized request argument supplied: suffix", param="suffix")
    stream, include_usage = stream_options(body)
    max_tokens = get_int(body, "max_tokens", minimum=0)
    n = get_int(body, "n", minimum=1, maximum=128)
    best_of = get_int(body, "best_of", minimum=0, maximum=20)
    if best_of is not None and n is not None and best_of < n:
        raise invalid(f"best_of must be greater than or equal to n, got best_of={best_of} and n={n}.",
                      param="best_of", code="invalid_value")
    if best_of is not None and best_of > (n or 1) and stream:
        raise invalid("best_of must equal n when streaming.", param="best_of", code="invalid_value")
    logprobs = get_int(body, "logprobs", minimum=0, maximum=5)
    get_number(body, "temperature", minimum=0, maximum=2)
    get_number(body, "top_p", minimum=0, maximum=1)
    get_number(body, "presence_penalty", minimum=-2, maximum=2)
    get_number(body, "frequency_penalty", minimum=-2, maximum=2)
    seed = get_int(body, "seed")
    get_str(body, "user")
    limit = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    ignore_eos, min_tokens = length_controls(body, limit)
    return Request(model=model, messages=[{"role": "user", "content": text}], prompt_ids=ids, prompt_framing=False,
                   prompt_param="prompt", stream=stream, include_usage=include_usage, max_tokens=limit,
                   stop=get_stop(body, "stop", 4), echo={"echo": True} if get_bool(body, "echo") else {},
                   n=n or 1, seed=seed, logprobs=logprobs, ignore_eos=ignore_eos, min_tokens=min_tokens)


def echoed(gen: Generation) -> str:
    """The prompt text the answer starts with (`echo: true`), else ""."""
    return gen.request.messages[0]["content"] if gen.request.echo.get("echo") else ""


def completion_usage(gen: Generation) -> dict:
    """The prompt once, the completion tokens of every choice summed; on a deployment with a prefix
    cache, `prompt_tokens_details.cached_tokens` too (as vLLM reports it)."""
    done = sum(c.plan.completion_tokens for c in gen.all)
    usage: dict = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": done,
                   "total_tokens": gen.prompt_tokens + done}
    if gen.profile.cache is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": gen.cache.read}
    return usage


def choice_logprobs(gen: Generation) -> dict | None:
    """A choice's legacy `logprobs` object (`logprobs: k`): with `echo`, the prompt's tokens first."""
    if gen.plan.logprobs is None:
        return None
    return _with_prompt(gen, legacy_logprobs([t for chunk in gen.plan.logprobs for t in chunk], len(echoed(gen))))


def _with_prompt(gen: Generation, generated: dict) -> dict:
    """`generated` (legacy logprobs) after the echoed prompt's own, whose first token has no log-probability
    (nothing precedes it), as OpenAI and vLLM answer `echo` with `logprobs`: scoring harnesses read these."""
    prompt = gen.plan.prompt_logprobs
    if not prompt:
        return generated
    out = legacy_logprobs(prompt)
    out["token_logprobs"][0] = None
    out["top_logprobs"][0] = None
    for key in out:
        out[key] += generated[key]
    return out


def finish_reason(gen: Generation) -> str:
    return "length" if gen.plan.finish_reason == "length" else "stop"


def text_completion(meta: dict, gen: Generation) -> dict:
    """The non-streaming `text_completion` object."""
    return {**meta, "choices": [{"text": echoed(c) + c.plan.text, "index": c.index, "logprobs": choice_logprobs(c),
                                 "finish_reason": finish_reason(c)} for c in gen.all],
            "usage": completion_usage(gen)}


class CompletionChunkEncoder(StreamEncoder):
    """SSE bytes of one streamed `text_completion`: a chunk per token, the finish chunk, usage, [DONE].

    The echoed prompt (`echo: true`) rides with the first token, so TTFT is still the first generated text.
    """

    def __init__(self, meta: dict, gen: Generation) -> None:
        super().__init__(gen)
        self.meta = meta
        head = json.dumps(meta, separators=(",", ":"))[:-1]
        self._head = f'data: {head},"choices":[{{"text":'.encode()
        self._usage_tail = ',"usage":null' if gen.request.include_usage else ""
        self._index = f',"index":{gen.index},"logprobs":'.encode()
        self._tail = f',"finish_reason":null}}]{self._usage_tail}}}\n\n'.encode()
        self._meta_head = f"data: {head},".encode()
        self._echo = echoed(gen)
        self._logprobs = gen.plan.logprobs
        self._piece = 0  # the next chunk's index (for its logprobs)
        self._offset = len(self._echo)  # legacy text_offset of the next token

    def for_choice(self, gen: Generation) -> StreamEncoder:
        return CompletionChunkEncoder(self.meta, gen)

    def opening(self) -> Iterable[bytes]:
        if self.gen.index == 0:
            yield HEADERS_NOW

    def _text(self, text: str) -> bytes:
        if self._echo:
            text, self._echo = self._echo + text, ""
        return json_str(text)

    def delta(self, index: int, block: Block, text: str) -> bytes:
        logprobs = b"null"
        if self._logprobs is not None:
            chunk = legacy_logprobs(self._logprobs[self._piece], self._offset)
            if self._piece == 0:  # the echoed prompt rides with the first chunk: its tokens too
                chunk = _with_prompt(self.gen, chunk)
            self._offset += len(text)
            logprobs = json.dumps(chunk, separators=(",", ":")).encode()
        self._piece += 1
        return self._head + self._text(text) + self._index + logprobs + self._tail

    def choice_closing(self) -> Iterable[bytes]:
        logprobs = b"null"
        if self._echo and self._logprobs is not None:  # no token came: the echoed prompt comes here, scored
            logprobs = json.dumps(_with_prompt(self.gen, legacy_logprobs([], self._offset)),
                                  separators=(",", ":")).encode()
        yield (self._head + self._text("") + self._index + logprobs + b',"finish_reason":'
               + json.dumps(finish_reason(self.gen)).encode() + f"}}]{self._usage_tail}}}\n\n".encode())

    def closing(self) -> Iterable[bytes]:
        gen = self.gen
        if gen.request.include_usage:
            yield (self._meta_head + b'"choices":[],"usage":'
                   + json.dumps(completion_usage(gen), separators=(",", ":")).encode() + b"}\n\n")
        yield DONE

    def error_event(self, err: ApiError) -> bytes:
        """An in-band failure after the 200: a `data: {"error": {...}}` chunk, as Chat Completions sends."""
        return b"data: " + json.dumps(err.openai_body(), separators=(",", ":")).encode() + b"\n\n"


class Completions(Api):
    """POST /v1/completions (legacy text completions)."""

    name = "completions"
    provider = "openai"
    paths = ("/v1/completions", "/openai/v1/completions")

    def parse(self, body: dict) -> Request:
        return parse_completions_request(body)

    @staticmethod
    def _meta(gen: Generation) -> dict:
        return {"id": new_id("cmpl-"), "object": "text_completion", "created": gen.created,
                "model": gen.request.model, "system_fingerprint": "fp_llmsim"}

    def body(self, gen: Generation) -> dict:
        return text_completion(self._meta(gen), gen)

    def encoder(self, gen: Generation) -> StreamEncoder:
        return CompletionChunkEncoder(self._meta(gen), gen)
