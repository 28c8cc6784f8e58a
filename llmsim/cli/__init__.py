"""The `llmsim` command: `serve` and `profiles`.

Importing this package does not monkey-patch: the entry points (llmsim/__main__.py,
which the console script runs) patch before they import it.
"""

import argparse
import sys

import yaml

from ..profiles import ProfileRegistry
from ..validation import ValidationError
from .config import add_server_flags, resolve_config


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
    return parser


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
        from .server import serve

        flags = {k: v for k, v in vars(args).items() if k != "command"}
        return serve(resolve_config(flags))
    except ValidationError as e:  # a bad profile or setting: one line, no traceback
        print(f"llmsim: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"llmsim: cannot start: {e.strerror or e}", file=sys.stderr)
        return 2
