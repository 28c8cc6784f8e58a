"""The documentation site (docs/, mkdocs.yml) agrees with the code: option tables with the parsers, the model
table with profiles/*.yaml, the start-up line with the server, config examples with the config loader, code
examples with the library. And the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmsim.cli import markdown_table
from llmsim.profiles import default_registry

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under `heading` (a whole heading line) up to the next heading of the same or a higher level."""
    start = text.index(heading + "\n")
    level = len(heading) - len(heading.lstrip("#"))
    rest = text[start + len(heading) + 1:]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[:end.start()] if end else rest


def cells(row: str) -> list[str]:
    """A Markdown table row's cells; a `|` inside a code span does not split."""
    out, cur, code = [], "", False
    for ch in row.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def option_rows(text: str) -> dict[str, list[str]]:
    """Rows of the tables whose first cell is a `--flag ...` code span, keyed by the flag."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `--"):
            c = cells(line)
            rows[c[0].strip("`").split()[0]] = c
    return rows


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def startup_description() -> str:
    """What `llmsim serve` with no settings prints in its start-up line, between the parentheses."""
    from llmsim.cli.config import resolve_config
    from llmsim.cli.server import describe
    from llmsim.cli.state import AppState

    return describe(AppState(resolve_config({}, env={})))


# --------------------------------------------------------------------------- the simulator

def test_profiles_table_matches_yaml():
    text = page("profiles.md")
    start = text.index("<!-- profiles-table:start -->\n") + len("<!-- profiles-table:start -->\n")
    end = text.index("<!-- profiles-table:end -->")
    assert text[start:end] == markdown_table(default_registry()), \
        "docs/profiles.md: the model table is stale; paste the output of `llmsim profiles --markdown`"


def test_serve_option_table_matches_the_parser():
    from llmsim.cli import _parser
    from llmsim.cli.config import OPTION_BY_KEY

    serve = _parser()._subparsers._group_actions[0].choices["serve"]
    flags = {a.option_strings[0]: a for a in serve._actions if a.option_strings and a.dest != "help"}
    rows = option_rows(section(page("server.md"), "## Options"))
    assert set(rows) == set(flags), "docs/server.md, Options: the flags differ from `llmsim serve --help`"
    for flag, (_, env, key, _default, _meaning) in rows.items():
        dest = flags[flag].dest
        if dest == "config":
            assert env == "`LLMSIM_CONFIG`"
        elif dest == "error_rate":
            assert env.startswith("`LLMSIM_ERROR_RATE`") and key == "`errors:`"
        else:
            option = OPTION_BY_KEY[dest]
            assert (env, key) == (f"`{option.env}`", f"`{option.key}`"), flag
            metavar = flags[flag].metavar
            assert rows[flag][0] == (f"`{flag} {metavar}`" if metavar else f"`{flag}`") or metavar is None, flag


def test_serve_option_defaults_match_the_code():
    from llmsim.cli.config import OPTIONS

    rows = option_rows(section(page("server.md"), "## Options"))
    documented = {r[2].strip("`"): r[3] for r in rows.values()}
    for o in OPTIONS:
        if isinstance(o.default, int) and not isinstance(o.default, bool):
            shown = documented[o.key].replace(",", "")
            expected = {str(o.default)} | ({f"{o.default // 2**20} MiB"} if o.default % 2**20 == 0 else set())
            assert shown in expected, f"docs/server.md: {o.key} default {shown!r}, code {o.default!r}"
        elif isinstance(o.default, str):
            assert documented[o.key] == o.default, o.key


def test_startup_line_matches_the_server():
    for name in ("server.md", "getting-started.md"):
        shown = re.findall(r"llmsim serving on http://127\.0\.0\.1:8080 \((.*)\)", page(name))
        assert shown, name
        assert set(shown) == {startup_description()}, f"docs/{name}: the start-up line is stale"


def config_examples() -> list[tuple[str, str]]:
    out = []
    for name in ("server.md", "faults-and-quotas.md"):
        for block in code_blocks(page(name), "yaml"):
            if block.startswith("# llmsim.yaml"):
                out.append((name, block))
    return out


def test_there_are_config_examples():
    assert {name for name, _ in config_examples()} == {"server.md", "faults-and-quotas.md"}


@pytest.mark.parametrize("name,block", config_examples(), ids=lambda v: v if v.endswith(".md") else "")
def test_config_examples_load(name, block):
    from llmsim.cli.config import resolve_config
    from llmsim.cli.state import AppState

    settings = yaml.safe_load(block)
    state = AppState(resolve_config({}, env={}, settings=settings))  # raises on any bad key or value
    registry = state.registry
    for profile in (settings.get("errors") or {}).get("profiles", {}):
        assert profile in registry.names(), f"docs/{name}: errors.profiles names {profile!r}, which is no profile"


def test_generator_specs_are_documented():
    from llmsim.generator import GENERATOR_NAMES

    text = page("generators.md")
    for spec in GENERATOR_NAMES:
        assert f"| `{spec}`" in text, spec


@pytest.mark.parametrize("name", ["library.md", "generators.md"])
def test_python_examples_run(name):
    blocks = [b for b in code_blocks(page(name), "python") if "def test_" not in b]
    assert blocks
    for block in blocks:
        exec(compile(block, f"docs/{name}", "exec"), {})


# --------------------------------------------------------------------------- the Locust toolkit

def test_locust_option_table_matches_the_parser():
    from llmsim.loadtest import options

    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    rows = option_rows(section(page("locust.md"), "## Options"))
    assert set(rows) == set(actions), "docs/locust.md, Options: the options differ from the parser"
    defaults = {"--llm-model": f"`{options.DEFAULT_MODEL}`", "--prompt-tokens": str(options.DEFAULT_PROMPT_TOKENS),
                "--max-tokens": str(options.DEFAULT_MAX_TOKENS), "--llm-tolerance": f"`{options.DEFAULT_TOLERANCE}`"}
    for flag, shown in defaults.items():
        assert rows[flag][1] == shown, flag
    assert actions["--max-tokens"].default == options.DEFAULT_MAX_TOKENS
    assert actions["--retry-429"].const == options.DEFAULT_RETRY_429
    assert f"({options.DEFAULT_RETRY_429} if N is left out)" in rows["--retry-429"][2]


def test_metric_definitions_name_every_metric():
    text = section(page("metrics.md"), "# Metric definitions")
    names = [cells(line)[0] for line in text.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    assert names == ["TTFT", "ITL", "TPOT", "E2E", "output_tokens", "ITL split", "throughput", "goodput"]


# --------------------------------------------------------------------------- the site

def test_every_page_is_in_the_nav():
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r":\s*(\S+\.md)\s*$", config.split("\nnav:", 1)[1], flags=re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == nav


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_site_builds_strict(tmp_path):
    # Not -q: with -q, mkdocs 1.6 drops warnings before --strict counts them.
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr + r.stdout
    assert (tmp_path / "site" / "metrics" / "index.html").exists()
