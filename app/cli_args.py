"""`kvserve serve` flags (named like `vllm serve`), each also read from a KVSERVE_* env var.

Precedence: command line, then environment, then the default (app/settings.py). A bad value (flag or
env var) prints one line `kvserve serve: error: ...` and exits with code 2. The defaults (which import
the engine package for EngineConfig's, and with it torch) are read only to print --help and to build
the Settings, so a bad flag answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .arg_types import format_size, parse_size
from .cli_options import DEFAULT_SERVED_NAME, Option
from .cli_options import OPTIONS as _OPTIONS

if TYPE_CHECKING:
    from .settings import Settings

ENV_PREFIX = "KVSERVE_"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


_BY_DEST = {opt.dest: opt for opt in _OPTIONS}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _shown_default(opt: Option) -> str | None:
    """The default as the help text shows it (None: not shown)."""
    from .settings import default_of

    value = default_of(opt.dest)
    if value is None or isinstance(value, list):
        return None
    return format_size(value) if opt.type is parse_size else str(value)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends '(default: X)' to an option's help when the help is printed (not when the parser is built)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        opt = _BY_DEST.get(action.dest)
        shown = _shown_default(opt) if opt is not None and text is not None else None
        return text if shown is None else f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvserve",
        description="kvserve: an OpenAI-compatible LLM inference server (paged KV cache, continuous batching).",
        epilog="Run 'kvserve serve --help' for the server's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = sub.add_parser(
        "serve",
        prog="kvserve serve",
        help="serve a model over the OpenAI API (completions, chat, models, tokenize)",
        description=(
            "Serve MODEL (a Hugging Face directory with safetensors, or a GGUF file; default: the embedded "
            f"{DEFAULT_SERVED_NAME}) with an OpenAI-compatible HTTP API. Every option can also be set with the "
            "environment variable shown after it; the command line wins."
        ),
        formatter_class=_HelpFormatter,
    )
    serve.add_argument(
        "model",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="model directory or .gguf file; several: one engine each, routed by the request's 'model' "
        f"(one --served-model-name per model) [env: {ENV_PREFIX}MODEL]",
    )
    for opt in _OPTIONS:
        text = opt.help + f" [env: {env_name(opt.flag)}]"
        if opt.kind == "bool":
            serve.add_argument(opt.flag, dest=opt.dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif opt.kind == "many":
            serve.add_argument(
                opt.flag, dest=opt.dest, type=opt.type, action="append", default=None, metavar=opt.metavar, help=text
            )
        else:
            metavar = opt.metavar or getattr(opt.type, "metavar", "N")
            serve.add_argument(opt.flag, dest=opt.dest, type=opt.type, default=None, metavar=metavar, help=text)
    return parser


def _from_env(parser: argparse.ArgumentParser, opt: Option, env: Mapping[str, str]) -> Any:
    name = env_name(opt.flag)
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        if opt.kind == "many":
            return [opt.type(part.strip()) for part in raw.split(",") if part.strip()]
        return opt.type(raw)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"environment variable {name}: {exc}")


def _read_template(parser: argparse.ArgumentParser, path: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            template = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--chat-template {path!r}: cannot read it: {exc}")
    if not template.strip():
        parser.error(f"--chat-template {path!r} is empty")
    return template


def parse_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> "Settings":
    """Settings from `kvserve serve` arguments (without 'serve') and the environment; exits 2 on error.
    Every value is checked before the defaults (and the engine package) are imported."""
    env = os.environ if env is None else env
    parser = build_parser()
    serve_parser = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    args = serve_parser.parse_args(list(argv))
    given: dict[str, Any] = {}
    for opt in _OPTIONS:
        value = getattr(args, opt.dest)
        value = _from_env(serve_parser, opt, env) if value is None else value
        if value is not None:
            given[opt.dest] = value
    models = list(args.model) or ([env[ENV_PREFIX + "MODEL"]] if env.get(ENV_PREFIX + "MODEL") else [])
    for i, model in enumerate(models):
        model = models[i] = os.path.expanduser(model)
        if not os.path.exists(model):
            serve_parser.error(f"model path {model!r} does not exist (kvserve loads local files only)")
        if model.endswith(PICKLE_SUFFIXES):
            serve_parser.error(
                f"model {model!r}: pickle checkpoints are refused (they can run code); use safetensors or GGUF"
            )
    names = given.get("served_model_names") or []
    if len(models) > 1 and names and len(names) != len(models):
        serve_parser.error(
            f"{len(models)} models need {len(models)} --served-model-name flags (one each), got {len(names)}"
        )
    if len(models) > 1 and given.get("ray"):
        serve_parser.error("--ray serves one model per application; start one per model")
    model = models[0] if models else None
    template_path = given.get("chat_template_path")
    template = _read_template(serve_parser, template_path) if template_path is not None else None
    if "allowed_origins" in given:
        given["allowed_origins"] = [
            o.strip() for item in given["allowed_origins"] for o in item.split(",") if o.strip()
        ]
    from .settings import Settings

    # Every value was checked by its flag's type; EngineConfig checks them again when the engine is built.
    return Settings(model=model, extra_models=models[1:], chat_template=template, **given)
