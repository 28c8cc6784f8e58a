"""Option parsing and resolution: profiles by name or file, prompts, synthetic prompt length."""

from __future__ import annotations

import argparse
import json

import pytest

from llmsim.loadtest.options import LoadTestSettings, OptionError, add_arguments
from llmsim.loadtest.prompts import PromptError, load_prompts, synthetic_prompt
from llmsim.tokens import count_chat_tokens, get_encoding

from .locust_helpers import PROFILES


def parse(*args: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(args))


def test_defaults_resolve_to_the_gpt5_profile():
    s = LoadTestSettings.from_options(parse())
    assert (s.model, s.profile.name, s.max_tokens, s.stream) == ("gpt-5", "gpt-5", 64, True)
    assert (s.tolerance.rel, s.tolerance.abs_ms) == (0.10, 5.0)
    assert len(s.prompts) == 1
    enc = get_encoding("o200k_base")
    assert len(enc.encode_ordinary(s.prompts[0].messages[0]["content"])) == 128
    assert s.prompts[0].prompt_tokens == count_chat_tokens(s.prompts[0].messages, enc)


@pytest.mark.parametrize("n", [1, 2, 7, 128, 1000])
@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_synthetic_prompt_has_exactly_n_tokens(n, encoding):
    enc = get_encoding(encoding)
    assert len(enc.encode_ordinary(synthetic_prompt(n, enc))) == n


def test_profile_by_name_file_and_model():
    assert LoadTestSettings.from_options(parse("--llm-profile", "fast")).profile.name == "fast"
    s = LoadTestSettings.from_options(parse("--llm-profile", str(PROFILES / "mini.yaml")))
    assert s.profile.name == "lt-mini" and s.profile_file and "lt-mini" in s.registry.names()
    assert LoadTestSettings.from_options(parse("--llm-model", "gpt-4o")).profile.name == "gpt-4o"
    with pytest.raises(OptionError, match="no profile covers model 'llama'"):
        LoadTestSettings.from_options(parse("--llm-model", "llama", "--llm-score", "on"))


def test_score_modes():
    """auto scores when a profile applies; a model no profile covers is measured only, not refused."""
    s = LoadTestSettings.from_options(parse("--llm-model", "llama"))
    assert s.profile is None and not s.score and s.encoding == "o200k_base"
    assert LoadTestSettings.from_options(parse()).score
    assert not LoadTestSettings.from_options(parse("--llm-score", "off")).score
    s = LoadTestSettings.from_options(parse("--llm-model", "llama", "--llm-profile", "fast"))
    assert s.score and s.profile.name == "fast"
    with pytest.raises(SystemExit):
        parse("--llm-score", "maybe")


@pytest.mark.parametrize("text, requests, seconds", [("0", 0, 0.0), ("20", 20, 0.0), ("10s", 0, 10.0),
                                                       ("2.5s", 0, 2.5)])
def test_warmup_values(text, requests, seconds):
    s = LoadTestSettings.from_options(parse("--llm-warmup", text))
    assert (s.warmup_requests, s.warmup_s, s.warmup) == (requests, seconds, text)


@pytest.mark.parametrize("text", ["-1", "x", "5m", "-2s", "1.5"])
def test_bad_warmup_is_one_line(text, capsys):
    with pytest.raises(SystemExit):
        parse("--llm-warmup", text)
    assert "--llm-warmup" in capsys.readouterr().err


def test_file_with_several_profiles_needs_a_covering_one(tmp_path):
    f = tmp_path / "two.yaml"
    f.write_text("profiles:\n"
                 "  - {name: a, models: [m-a], ttft: {mean_ms: 1}, itl: {mean_ms: 1}}\n"
                 "  - {name: b, models: [m-b], ttft: {mean_ms: 2}, itl: {mean_ms: 2}}\n")
    assert LoadTestSettings.from_options(parse("--llm-profile", str(f), "--llm-model", "m-b")).profile.name == "b"
    with pytest.raises(OptionError, match="several profiles"):
        LoadTestSettings.from_options(parse("--llm-profile", str(f), "--llm-model", "other"))


def test_bad_profile_yaml_is_one_line(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("profiles:\n  - {name: x, ttft: {mean_ms: -1}, itl: {mean_ms: 1}}\n")
    with pytest.raises(SystemExit):
        parse("--llm-profile", str(f))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ttft.mean_ms" in err and "must be >= 0" in err


def test_prompts_file_formats(tmp_path):
    f = tmp_path / "p.jsonl"
    lines = ['"just text"', '{"prompt": "with key"}',
             '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}',
             '[{"role": "user", "content": "bare list"}]', ""]
    f.write_text("\n".join(lines))
    prompts = load_prompts(f)
    assert [p[-1]["content"] for p in prompts] == ["just text", "with key", "u", "bare list"]
    s = LoadTestSettings.from_options(parse("--prompts", str(f)))
    entries = s.workload.spec.dataset.entries
    assert len(entries) == 4 and [e.messages[-1]["content"] for e in entries][:2] == ["just text", "with key"]
    assert s.prompts[0].prompt_tokens > 0
    with pytest.raises(OptionError, match="exclude each other"):
        LoadTestSettings.from_options(parse("--prompts", str(f), "--prompt-tokens", "5"))


@pytest.mark.parametrize("content, reason", [
    ("{bad json", "invalid JSON"), ('{"x": 1}', "expected a string"), ("", "no prompts"), ('""', "empty prompt"),
])
def test_prompts_file_errors_name_the_line(tmp_path, content, reason):
    f = tmp_path / "p.jsonl"
    f.write_text('"ok"\n' + content if content else "")
    with pytest.raises(PromptError, match=reason) as e:
        load_prompts(f)
    if content:
        assert f"{f}:2" in str(e.value)


def test_no_stream_and_tolerance():
    s = LoadTestSettings.from_options(parse("--no-stream", "--llm-tolerance", "3%,1ms", "--max-tokens", "9"))
    assert not s.stream and s.max_tokens == 9 and (s.tolerance.rel, s.tolerance.abs_ms) == (0.03, 1.0)
    assert json.dumps(vars(parse("--llm-tolerance", "3%")))  # option values stay msgpack/JSON-safe



def test_help_text_formats():
    import argparse

    from llmsim.loadtest.options import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()  # argparse %-formats every help string: a bare % would raise here
    assert "--llm-tolerance" in text and "10%,5ms" in text
