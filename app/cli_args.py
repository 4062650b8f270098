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
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

from .arg_types import choice, device, format_size, fraction, parse_bool, parse_size, port, positive_int, seconds

if TYPE_CHECKING:
    from .settings import Settings

ENV_PREFIX = "KVSERVE_"
DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"  # the embedded model's name (also what the engine reports)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class Option(NamedTuple):
    flag: str
    dest: str  # the Settings field
    type: Callable[[str], Any]
    help: str
    kind: str = "one"  # one | many (repeatable, env: comma-separated) | bool (--x / --no-x)
    metavar: str | None = None


_OPTIONS: list[Option] = [
    Option("--host", "host", str, "address to listen on", metavar="HOST"),
    Option("--port", "port", port, "TCP port to listen on", metavar="PORT"),
    Option(
        "--api-key",
        "api_keys",
        str,
        "require 'Authorization: Bearer KEY' on every route except /health and /version; repeat the flag "
        "for several keys (env: comma-separated)",
        "many",
        "KEY",
    ),
    Option(
        "--served-model-name",
        "served_model_names",
        str,
        "a name clients use in the 'model' field; repeatable, the first is the main one "
        f"(default: the model's own name, {DEFAULT_SERVED_NAME} for the embedded model)",
        "many",
        "NAME",
    ),
    Option(
        "--max-model-len",
        "max_model_len",
        positive_int,
        "context length in tokens, prompt plus output (default: the model's limit)",
    ),
    Option("--max-num-seqs", "max_num_seqs", positive_int, "most sequences decoded together in one step"),
    Option(
        "--max-num-batched-tokens",
        "max_num_batched_tokens",
        positive_int,
        "token budget of one engine step (prefill chunks plus decodes)",
    ),
    Option("--block-size", "block_size", positive_int, "tokens per KV-cache block"),
    Option(
        "--dtype",
        "dtype",
        choice("auto", "float32", "bfloat16", "float16"),
        "compute dtype: auto (bf16 on CUDA, and on CPUs with usable AMX where a start-up measurement finds it "
        "faster; else fp32), float32, bfloat16, float16",
    ),
    Option("--device", "device", device, "auto, cpu, cuda or cuda:N", metavar="{auto,cpu,cuda,cuda:N}"),
    Option(
        "--kv-cache-memory",
        "kv_cache_memory",
        parse_size,
        "bytes for the KV cache on CPU, e.g. 512MiB or 2GiB (default 512MiB)",
        metavar="SIZE",
    ),
    Option(
        "--gpu-memory-utilization", "gpu_memory_utilization", fraction, "fraction of free CUDA memory for the KV cache"
    ),
    Option("--num-threads", "num_threads", positive_int, "torch threads on CPU (default: all cores)"),
    Option(
        "--quantization",
        "quantization",
        choice("none", "fp16"),
        "fp16: keep weights in float16 and multiply them in float32 with fbgemm (x86 CPU, dtype float32); "
        "half the weight memory and 1.1-1.7x faster decode on CPUs without AMX, at a 2^-11 weight rounding",
    ),
    Option(
        "--enable-prefix-caching",
        "enable_prefix_caching",
        parse_bool,
        "reuse KV blocks of identical prompt prefixes (--no-enable-prefix-caching to turn off)",
        "bool",
    ),
    Option(
        "--chat-template",
        "chat_template_path",
        str,
        "a Jinja chat template FILE that replaces the model's (rendered in a sandbox)",
        metavar="FILE",
    ),
    Option(
        "--max-queue",
        "max_queue",
        positive_int,
        "most generation requests admitted at once, running or waiting; beyond it: 429 with Retry-After",
    ),
    Option(
        "--max-body-bytes",
        "max_body_bytes",
        parse_size,
        "largest request body accepted (413 beyond), e.g. 512KiB or 8MiB",
        metavar="SIZE",
    ),
    Option(
        "--allowed-origins",
        "allowed_origins",
        str,
        "CORS origins allowed to call the API, e.g. http://localhost:3000 or '*'; repeat or comma-separate "
        "(default: none, no CORS headers)",
        "many",
        "ORIGIN",
    ),
    Option(
        "--log-level",
        "log_level",
        choice("debug", "info", "warning", "error", "critical"),
        "logging level; every request gets one line at info",
    ),
    Option(
        "--log-format",
        "log_format",
        choice("text", "json"),
        "text (one readable line per record) or json (one JSON object per line)",
    ),
    Option(
        "--log-prompts",
        "log_prompts",
        parse_bool,
        "put the prompt (text or token ids) into each request's log line; off by default, prompts may be private",
        "bool",
    ),
    Option(
        "--log-stats-interval",
        "log_stats_interval",
        seconds,
        "seconds between engine-stats log lines while requests run (0: none)",
        metavar="SECONDS",
    ),
    Option(
        "--shutdown-timeout",
        "shutdown_timeout",
        seconds,
        "on SIGTERM/SIGINT, seconds in-flight requests may take to finish (new ones get 503) before the rest "
        "are aborted",
        metavar="SECONDS",
    ),
]
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
        nargs="?",
        default=None,
        metavar="MODEL",
        help=f"model directory or .gguf file [env: {ENV_PREFIX}MODEL]",
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
    model = args.model if args.model is not None else (env.get(ENV_PREFIX + "MODEL") or None)
    if model is not None:
        model = os.path.expanduser(model)
        if not os.path.exists(model):
            serve_parser.error(f"model path {model!r} does not exist (kvserve loads local files only)")
        if model.endswith(PICKLE_SUFFIXES):
            serve_parser.error(
                f"model {model!r}: pickle checkpoints are refused (they can run code); use safetensors or GGUF"
            )
    template_path = given.get("chat_template_path")
    template = _read_template(serve_parser, template_path) if template_path is not None else None
    if "allowed_origins" in given:
        given["allowed_origins"] = [
            o.strip() for item in given["allowed_origins"] for o in item.split(",") if o.strip()
        ]
    from .settings import Settings

    # Every value was checked by its flag's type; EngineConfig checks them again when the engine is built.
    return Settings(model=model, chat_template=template, **given)
