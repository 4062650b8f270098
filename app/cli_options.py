"""The table of `kvserve serve` flags: name, Settings field, value parser, help, kind (app/cli_args.py reads it)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .arg_types import choice, device, fraction, parse_bool, parse_size, port, positive_float, positive_int, seconds

DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"  # the embedded model's name (also what the engine reports)


class Option(NamedTuple):
    flag: str
    dest: str  # the Settings field
    type: Callable[[str], Any]
    help: str
    kind: str = "one"  # one | many (repeatable, env: comma-separated) | bool (--x / --no-x)
    metavar: str | None = None


OPTIONS: list[Option] = [
    Option("--host", "host", str, "address to listen on", metavar="HOST"),
    Option("--port", "port", port, "TCP port to listen on", metavar="PORT"),
    Option(
        "--api-key",
        "api_keys",
        str,
        "require 'Authorization: Bearer KEY' on every route except /health, /version and the chat page's "
        "files; repeat the flag "
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
        "--block-kernels",
        "block_kernels",
        parse_bool,
        "CPU float32: multiply GGUF Q4_1/Q8_0 weights straight from their blocks with kvserve's exact kernels "
        "(built once into ~/.cache/kvserve; --no-block-kernels for the float32 oneDNN path)",
        "bool",
    ),
    Option(
        "--attention-backend",
        "attention_backend",
        choice("auto", "sdpa", "torch_ref"),
        "auto: the fused C++ CPU decoder where the block kernels run every layer (decode steps in one native "
        "call, paged attention reading the cache in place), else torch SDPA; sdpa: torch's path always; "
        "torch_ref: the per-sequence reference math (slow, for checks)",
    ),
    Option("--ray", "ray", parse_bool, "serve on Ray Serve: replicas of the whole server behind Ray's proxy", "bool"),
    Option("--num-replicas", "num_replicas", positive_int, "--ray: engine replicas"),
    Option(
        "--ray-address", "ray_address", str, "--ray: the Ray cluster to join (default: a local one)", metavar="ADDR"
    ),
    Option(
        "--ray-cpus-per-replica", "ray_cpus_per_replica", positive_float, "--ray: CPUs (and torch threads) per replica"
    ),
    Option("--ray-max-replicas", "ray_max_replicas", positive_int, "--ray: autoscale up to N replicas on queue depth"),
    Option(
        "--embedding-pooling",
        "embedding_pooling",
        choice("last", "mean"),
        "/v1/embeddings: pool the final-norm hidden states by the last token or the mean (L2-normalized)",
    ),
    Option(
        "--request-timeout",
        "request_timeout",
        seconds,
        "abort a request still running after this many seconds: 408 request_timeout, or the stream's error "
        "event (0: no limit, the default)",
    ),
    Option(
        "--stream-send-timeout",
        "stream_send_timeout",
        seconds,
        "drop a stream whose client has not taken one event for this many seconds (0: never)",
    ),
    Option(
        "--responses-store",
        "responses_store",
        parse_bool,
        "keep /v1/responses results in memory for GET /v1/responses/{id} and previous_response_id "
        "(--no-responses-store: nothing is kept, as if every request sent store=false)",
        "bool",
    ),
    Option("--responses-store-size", "responses_store_size", positive_int, "stored responses kept at most"),
    Option("--responses-store-ttl", "responses_store_ttl", seconds, "seconds a stored response is kept"),
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
    Option("--webui", "webui", parse_bool, "serve the built-in chat page at / (--no-webui: / is a 404)", "bool"),
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
