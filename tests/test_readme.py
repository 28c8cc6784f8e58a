"""The README stays a short front page: two Quickstart commands (the second is what CI runs), links that
resolve, and figures that agree with the code. The reference lives in docs/ (tests/test_docs.py)."""

import re
from pathlib import Path

from .test_docs import startup_description

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def quickstart_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_quickstart_has_two_commands_and_ci_runs_the_test_one():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert "locust -f locustfiles/chat.py" in commands[0]
    # .ci/run runs the same steps, in the same order (it builds the docs between install and pytest).
    ci = (REPO / ".ci" / "run").read_text()
    pos = 0
    for step in commands[1].split(" && "):
        found = ci.find(step, pos)
        assert found >= 0, f".ci/run does not run {step!r} (after position {pos}) as the README's test command does"
        pos = found + len(step)
    assert "mkdocs build --strict" in ci and "-q" not in ci.split("mkdocs build", 1)[1].splitlines()[0], \
        "mkdocs -q hides warnings from --strict"


def test_readme_stays_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move reference material to docs/"


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (REPO / path).exists(), f"README links to {target}, which does not exist"
        else:
            assert anchor in anchors, f"README links to #{anchor}, which is no heading"


def test_readme_startup_line_matches_the_server():
    text = README.read_text(encoding="utf-8")
    shown = re.findall(r"llmsim serving on http://127\.0\.0\.1:8080 \((.*)\)", text)
    assert shown, "the README no longer shows the start-up line"
    assert set(shown) == {startup_description()}
