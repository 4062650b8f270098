"""Server settings: `kvserve serve` flags (named like `vllm serve`), each also read from a KVSERVE_* env var.

Precedence: command line, then environment, then the default. A bad value (flag or env var) prints
one line `kvserve serve: error: ...` and exits with code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

ENV_PREFIX = "KVSERVE_"
DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"  # the embedded model's name (also what the engine reports)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass
class Settings:
    model: str | None = None  # None: the embedded default model
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    served_model_names: list[str] = field(default_factory=list)  # empty: the engine's default name
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    dtype: str = "auto"
    device: str = "auto"
    kv_cache_memory: int | None = None
    gpu_memory_utilization: float = 0.85
    num_threads: int | None = None
    quantization: str = "none"  # none | fp16 (float16 weights, float32 math; CPU)
    enable_prefix_caching: bool = True
    chat_template: str | None = None  # the template text read from --chat-template FILE
    chat_template_path: str | None = None
    max_queue: int = 256  # generation requests admitted at once (running + waiting); more get 429
    max_body_bytes: int = 8 * 1024 * 1024
    allowed_origins: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"  # text | json (one JSON object per line)
    log_prompts: bool = False  # put prompt text into the per-request log lines
    log_stats_interval: float = 5.0  # seconds between engine-stats lines while busy; 0: off
    shutdown_timeout: float = 8.0  # seconds in-flight requests may take to finish after SIGTERM

    def engine_config(self):
        """The EngineConfig these settings ask for (ValueError on a bad combination)."""
        from model import EngineConfig

        return EngineConfig(
            model=self.model,
            dtype=self.dtype,
            device=self.device,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            block_size=self.block_size,
            kv_cache_memory=self.kv_cache_memory,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_prefix_caching=self.enable_prefix_caching,
            num_threads=self.num_threads,
            quantization=None if self.quantization == "none" else self.quantization,
            chat_template=self.chat_template,
        )


# ------------------------------------------------------------------------------------------ parsing


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port must be between 0 and 65535, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from '536870912', '512MiB', '0.5GiB', '2G' (k/m/g are powers of 1000, KiB/MiB/GiB of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 536870912, 512MiB or 2GiB, got {text!r}")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


# (flag, dest, type, default, help, kind) — kind: "one" | "many" | "bool"
_OPTIONS: list[tuple[str, str, Callable[[str], Any], Any, str, str]] = [
    ("--host", "host", str, "127.0.0.1", "address to listen on", "one"),
    ("--port", "port", _port, 8000, "TCP port to listen on", "one"),
    ("--api-key", "api_keys", str, [],
     "require 'Authorization: Bearer KEY' on every route except /health and /version; repeat the flag "
     "for several keys (env: comma-separated)", "many"),
    ("--served-model-name", "served_model_names", str, [],
     "a name clients use in the 'model' field; repeatable, the first is the main one "
     f"(default: the model's own name, {DEFAULT_SERVED_NAME} for the embedded model)", "many"),
    ("--max-model-len", "max_model_len", _positive_int, None,
     "context length in tokens, prompt plus output (default: the model's limit)", "one"),
    ("--max-num-seqs", "max_num_seqs", _positive_int, 64, "most sequences decoded together in one step", "one"),
    ("--max-num-batched-tokens", "max_num_batched_tokens", _positive_int, 2048,
     "token budget of one engine step (prefill chunks plus decodes)", "one"),
    ("--block-size", "block_size", _positive_int, 16, "tokens per KV-cache block", "one"),
    ("--dtype", "dtype", _choice("auto", "float32", "bfloat16", "float16"), "auto",
     "compute dtype: auto (bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else fp32), float32, bfloat16, float16",
     "one"),
    ("--device", "device", _device, "auto", "auto, cpu, cuda or cuda:N", "one"),
    ("--kv-cache-memory", "kv_cache_memory", parse_size, None,
     "bytes for the KV cache on CPU, e.g. 512MiB or 2GiB (default 512MiB)", "one"),
    ("--gpu-memory-utilization", "gpu_memory_utilization", _fraction, 0.85,
     "fraction of free CUDA memory for the KV cache", "one"),
    ("--num-threads", "num_threads", _positive_int, None, "torch threads on CPU (default: all cores)", "one"),
    ("--quantization", "quantization", _choice("none", "fp16"), "none",
     "fp16: keep weights in float16 and multiply them in float32 with fbgemm (x86 CPU, dtype float32); "
     "half the weight memory and 1.1-1.7x faster decode on CPUs without AMX, at a 2^-11 weight rounding",
     "one"),
    ("--enable-prefix-caching", "enable_prefix_caching", _bool, True,
     "reuse KV blocks of identical prompt prefixes (--no-enable-prefix-caching to turn off)", "bool"),
    ("--chat-template", "chat_template_path", str, None,
     "a Jinja chat template FILE that replaces the model's (rendered in a sandbox)", "one"),
    ("--max-queue", "max_queue", _positive_int, 256,
     "most generation requests admitted at once, running or waiting; beyond it: 429 with Retry-After", "one"),
    ("--max-body-bytes", "max_body_bytes", parse_size, 8 * 1024 * 1024,
     "largest request body accepted (413 beyond), e.g. 8MiB", "one"),
    ("--allowed-origins", "allowed_origins", str, [],
     "CORS origins allowed to call the API, e.g. http://localhost:3000 or '*'; repeat or comma-separate "
     "(default: none, no CORS headers)", "many"),
    ("--log-level", "log_level", _choice("debug", "info", "warning", "error", "critical"), "info",
     "logging level; every request gets one line at info", "one"),
    ("--log-format", "log_format", _choice("text", "json"), "text",
     "text (one readable line per record) or json (one JSON object per line)", "one"),
    ("--log-prompts", "log_prompts", _bool, False,
     "put the prompt (text or token ids) into each request's log line; off by default, prompts may be "
     "private", "bool"),
    ("--log-stats-interval", "log_stats_interval", _seconds, 5.0,
     "seconds between engine-stats log lines while requests run (0: none)", "one"),
    ("--shutdown-timeout", "shutdown_timeout", _seconds, 8.0,
     "on SIGTERM/SIGINT, seconds in-flight requests may take to finish (new ones get 503) before the rest "
     "are aborted", "one"),
]


_METAVARS = {"api_keys": "KEY", "served_model_names": "NAME", "chat_template_path": "FILE",
             "allowed_origins": "ORIGIN", "kv_cache_memory": "SIZE", "max_body_bytes": "SIZE", "host": "HOST",
             "port": "PORT", "dtype": "{auto,float32,bfloat16,float16}", "device": "{auto,cpu,cuda,cuda:N}", "quantization": "{none,fp16}",
             "log_level": "{debug,info,warning,error,critical}", "log_format": "{text,json}",
             "log_stats_interval": "SECONDS", "shutdown_timeout": "SECONDS"}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("model", nargs="?", default=None, metavar="MODEL",
                       help=f"model directory or .gguf file [env: {ENV_PREFIX}MODEL]")
    for flag, dest, typ, default, text, kind in _OPTIONS:
        shown = default if not isinstance(default, list) else None
        suffix = f" [env: {env_name(flag)}]" + (f" (default: {shown})" if shown is not None else "")
        if kind == "bool":
            serve.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=text + suffix)
        elif kind == "many":
            serve.add_argument(flag, dest=dest, type=typ, action="append", default=None,
                               metavar=_METAVARS.get(dest), help=text + suffix)
        else:
            serve.add_argument(flag, dest=dest, type=typ, default=None, metavar=_METAVARS.get(dest, "N"),
                               help=text + suffix)
    return parser


def _from_env(parser: argparse.ArgumentParser, flag: str, typ: Callable[[str], Any], kind: str,
              env: Mapping[str, str]) -> Any:
    name = env_name(flag)
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        if kind == "many":
            return [typ(part.strip()) for part in raw.split(",") if part.strip()]
        if kind == "bool":
            return _bool(raw)
        return typ(raw)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"environment variable {name}: {exc}")


def parse_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `kvserve serve` arguments (without 'serve') and the environment; exits 2 on error."""
    env = os.environ if env is None else env
    parser = build_parser()
    serve_parser = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    args = serve_parser.parse_args(list(argv))
    values: dict[str, Any] = {}
    for flag, dest, typ, default, _text, kind in _OPTIONS:
        value = getattr(args, dest)
        if value is None:
            value = _from_env(serve_parser, flag, typ, kind, env)
        if value is None:
            value = list(default) if isinstance(default, list) else default
        values[dest] = value
    model = args.model if args.model is not None else (env.get(ENV_PREFIX + "MODEL") or None)
    if model is not None:
        model = os.path.expanduser(model)
        if not os.path.exists(model):
            serve_parser.error(f"model path {model!r} does not exist (kvserve loads local files only)")
        if model.endswith(PICKLE_SUFFIXES):
            serve_parser.error(f"model {model!r}: pickle checkpoints are refused (they can run code); "
                               "use safetensors or GGUF")
    template_path = values.pop("chat_template_path")
    template = None
    if template_path is not None:
        try:
            with open(os.path.expanduser(template_path), encoding="utf-8") as f:
                template = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            serve_parser.error(f"--chat-template {template_path!r}: cannot read it: {exc}")
        if not template.strip():
            serve_parser.error(f"--chat-template {template_path!r} is empty")
    origins = [o.strip() for item in values.pop("allowed_origins") for o in item.split(",") if o.strip()]
    # Every value was checked by its flag's type; EngineConfig checks them again when the engine is built.
    return Settings(model=model, chat_template=template, chat_template_path=template_path,
                    allowed_origins=origins, **values)
