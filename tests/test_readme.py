"""The README's model table is generated from profiles/*.yaml and must stay equal to it."""

from pathlib import Path

from llmsim.cli import markdown_table
from llmsim.profiles import default_registry

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_profiles_table_matches_yaml():
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- profiles-table:start -->\n") + len("<!-- profiles-table:start -->\n")
    end = text.index("<!-- profiles-table:end -->")
    assert text[start:end] == markdown_table(default_registry()), \
        "README table is stale: paste the output of `llmsim profiles --markdown`"


def test_readme_quickstart_has_two_commands_and_ci_runs_the_test_one():
    text = README.read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci


def test_readme_serve_table_lists_every_serve_flag():
    import argparse

    from llmsim.cli.config import add_server_flags

    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    text = README.read_text(encoding="utf-8").split("## `llmsim serve`", 1)[1].split("\n\n", 2)[1]
    rows = {ln.split("`")[1].split()[0] for ln in text.splitlines() if ln.startswith("| `--")}
    assert rows == flags - {"--help"}
