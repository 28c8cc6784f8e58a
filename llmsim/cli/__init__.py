"""The `llmsim` command: `serve`, `profiles`, `record`, `replay` and `profile fit`.

Importing this package does not monkey-patch: the entry points (llmsim/__main__.py,
which the console script runs) patch before they import it.
"""

import argparse
import sys
from collections.abc import Callable
from typing import Any

import yaml

from ..profiles import ProfileRegistry
from ..validation import ValidationError
from .config import PORT, add_server_flags, positive_seconds, resolve_config


def _checked(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a config converter: its reason in the one-line usage error."""
    def parse(text: str) -> Any:
        try:
            return conv(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmsim", description="LLM traffic simulator: OpenAI and Anthropic APIs "
                                                                "with realistic token streaming.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the simulator server")
    add_server_flags(serve)
    prof = sub.add_parser("profiles", help="list the profiles, or show one")
    prof.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    prof.add_argument("name", nargs="?", help="profile or model name (with show)")
    prof.add_argument("--profiles-dir", default=None, help="directory of extra or overriding profile YAMLs")
    prof.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/profiles.md)")
    rec = sub.add_parser("record", help="a proxy that records every request and response (with timing) as JSONL")
    rec.add_argument("--upstream", required=True, metavar="URL",
                     help="the OpenAI- or Anthropic-compatible API to forward to (http:// or https://)")
    rec.add_argument("--out", required=True, metavar="FILE.jsonl", help="the record file (one JSON line per request)")
    rec.add_argument("--append", action="store_true", help="append to FILE.jsonl instead of starting it afresh")
    rec.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    rec.add_argument("--port", type=_checked(PORT), default=8081,
                     help="port to bind; 0 picks a free one (default %(default)s)")
    rec.add_argument("--timeout", type=_checked(positive_seconds), default=600.0, metavar="S",
                     help="give up on an upstream that sends nothing for S seconds (default %(default)g)")
    rep = sub.add_parser("replay", help="serve recorded answers with their recorded timing (the generator answers "
                                         "the rest)")
    rep.add_argument("records", nargs="+", metavar="FILE.jsonl", help="record files written by `llmsim record`")
    rep.add_argument("--match", default=None, metavar="FIELD,...",
                     help="match requests on these top-level body fields (and stream) instead of the exact body, "
                          "e.g. model,messages")
    rep.add_argument("--strict", action="store_true",
                     help="answer an unmatched request with 404 in the provider's envelope instead of generating")
    add_server_flags(rep)
    pf = sub.add_parser("profile", help="work with measured traffic: `profile fit`")
    pf_sub = pf.add_subparsers(dest="profile_command", required=True)
    fit = pf_sub.add_parser("fit", help="fit a profile YAML (latency, prefill, reasoning, load model) to recorded "
                                        "traffic and print how well each part fits")
    fit.add_argument("files", nargs="+", metavar="FILE",
                     help="`llmsim record` JSONL and/or Locust --llm-records JSONL files")
    fit.add_argument("--out", default=None, metavar="PROFILE.yaml",
                     help="write the profile here (default: print it to stdout, the report to stderr)")
    fit.add_argument("--name", default=None, help="the profile's name (default: MODEL-fitted)")
    fit.add_argument("--models", default=None, metavar="M1,M2",
                     help="fit only records of these models (names or globs) and list them as the profile's models "
                          "(default: every model in the records)")
    return parser


def _profile_fit(args: argparse.Namespace) -> int:
    from ..fit import FitError, fit, format_report, load_observations, profile_yaml

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    try:
        observations, files = load_observations(args.files)
        result = fit(observations, files, models)
    except FitError as e:
        print(f"llmsim profile fit: {e}", file=sys.stderr)
        return 2
    name = args.name or (f"{result.models[0]}-fitted" if result.models else "fitted")
    text = profile_yaml(result, name)
    report = format_report(result)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as e:
            print(f"llmsim profile fit: cannot write {args.out} ({e.strerror or e})", file=sys.stderr)
            return 2
        print(report + f"\nWrote profile {name!r} to {args.out} (use: llmsim serve --profiles-dir DIR)", flush=True)
    else:
        print(report, file=sys.stderr, flush=True)
        print(text, end="", flush=True)
    return 0


def _replay_book(args: argparse.Namespace):  # -> ReplayBook
    from ..replay import ReplayBook

    fields = [f.strip() for f in args.match.split(",") if f.strip()] if args.match else None
    if args.match is not None and not fields:
        raise ValidationError("command line", "--match", "give one or more field names, e.g. model,messages")
    return ReplayBook.load(args.records, fields, strict=args.strict)


def _profiles(args: argparse.Namespace) -> int:
    import os

    extra = args.profiles_dir or os.environ.get("LLMSIM_PROFILES_DIR")
    registry = ProfileRegistry.load(extra_dirs=[extra] if extra else [])
    if args.action == "show":
        if not args.name:
            print("llmsim profiles show: give a profile or model name", file=sys.stderr)
            return 2
        try:
            profile = registry.resolve(args.name)
        except KeyError:
            print(f"llmsim: no profile covers {args.name!r} (see `llmsim profiles`)", file=sys.stderr)
            return 2
        print(yaml.safe_dump(profile.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    if args.markdown:
        print(markdown_table(registry), end="")
        return 0
    rows = [("PROFILE", "TTFT ms", "ITL ms", "ENCODING", "MODELS")]
    for p in registry:
        if p.embedding is not None:
            e = p.embedding
            rows.append((p.name, f"embedding {e.base_ms:g}+{e.per_token_ms:g}/token", f"{e.dimensions} dims",
                         p.encoding, ", ".join(p.models)))
            continue
        rows.append((p.name, f"{p.ttft.mean_ms:g}±{p.ttft.stddev_ms:g}", f"{p.itl.mean_ms:g}±{p.itl.stddev_ms:g}",
                     p.encoding, ", ".join(p.models) or "(select with --latency-profile)"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


def markdown_table(registry: ProfileRegistry) -> str:
    """The model table of docs/profiles.md, generated from profiles/*.yaml (a test keeps them equal)."""
    out = ["| profile | models | TTFT ms (mean±sd) | ITL ms (mean±sd) | encoding | context | max output |",
           "|---|---|---|---|---|---|---|"]
    embedding = ["", "Embedding profiles (`POST /v1/embeddings`):", "",
                 "| profile | models | dimensions | `dimensions` parameter | latency ms | encoding "
                 "| max input tokens |",
                 "|---|---|---|---|---|---|---|"]
    for p in registry:
        models = ", ".join(f"`{m}`" for m in p.models) or "(select with `--latency-profile`)"
        e = p.embedding
        if e is not None:
            embedding.append(f"| `{p.name}` | {models} | {e.dimensions} | {'yes' if e.dimensions_param else 'no'} | "
                             f"{e.base_ms:g} + {e.per_token_ms:g} per token | {p.encoding} | {e.max_input_tokens} |")
            continue
        out.append(f"| `{p.name}` | {models} | {p.ttft.mean_ms:g}±{p.ttft.stddev_ms:g} ({p.ttft.kind}) | "
                   f"{p.itl.mean_ms:g}±{p.itl.stddev_ms:g} ({p.itl.kind}) | {p.encoding} | {p.context_window} | "
                   f"{p.max_output_tokens} |")
    if len(embedding) > 5:
        out += embedding
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "profiles":
            return _profiles(args)
        if args.command == "profile":
            return _profile_fit(args)
        if args.command == "record":
            from .proxy import run as run_proxy

            return run_proxy(args.upstream, args.out, args.host, args.port, args.timeout, args.append)
        from .server import serve

        replay = None
        if args.command == "replay":
            from ..replay import ReplayError

            try:
                replay = _replay_book(args)
            except ReplayError as e:
                print(f"llmsim: {e}", file=sys.stderr)
                return 2
        flags = {k: v for k, v in vars(args).items() if k not in ("command", "records", "match", "strict")}
        return serve(resolve_config(flags), replay=replay)
    except ValidationError as e:  # a bad profile or setting: one line, no traceback
        print(f"llmsim: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"llmsim: cannot start: {e.strerror or e}", file=sys.stderr)
        return 2
