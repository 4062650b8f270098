"""Server settings: what `kvserve serve` was asked for (flags and KVSERVE_* env vars, app/cli_args.py).

Defaults live in one place each: the engine's options default to `model.EngineConfig`'s field defaults,
the server's own ones are this dataclass's; the flag table and its help text read them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model import EngineConfig

ENGINE_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(EngineConfig) if f.default is not dataclasses.MISSING
}


def _engine(name: str) -> Any:
    """A Settings field that defaults to EngineConfig's default for `name`."""
    return field(default=ENGINE_DEFAULTS[name])


@dataclass
class Settings:
    model: str | None = _engine("model")  # None: the embedded default model
    extra_models: list[str] = field(default_factory=list)  # more MODEL arguments: one engine each
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    served_model_names: list[str] = field(default_factory=list)  # empty: the engine's default name
    max_model_len: int | None = _engine("max_model_len")
    max_num_seqs: int = _engine("max_num_seqs")
    max_num_batched_tokens: int = _engine("max_num_batched_tokens")
    block_size: int = _engine("block_size")
    dtype: str = _engine("dtype")
    device: str = _engine("device")
    kv_cache_memory: int | None = _engine("kv_cache_memory")
    gpu_memory_utilization: float = _engine("gpu_memory_utilization")
    num_threads: int | None = _engine("num_threads")
    quantization: str = ENGINE_DEFAULTS["quantization"] or "none"  # none | fp16 (float16 weights; CPU)
    enable_prefix_caching: bool = _engine("enable_prefix_caching")
    block_kernels: bool = _engine("block_kernels")
    attention_backend: str = _engine("attention_backend")  # auto | sdpa | torch_ref
    chat_template: str | None = _engine("chat_template")  # the template text read from --chat-template FILE
    chat_template_path: str | None = None
    max_queue: int = 256  # generation requests admitted at once (running + waiting); more get 429
    max_body_bytes: int = 2 * 1024 * 1024
    allowed_origins: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"  # text | json (one JSON object per line)
    log_prompts: bool = False  # put prompt text into the per-request log lines
    log_stats_interval: float = 5.0  # seconds between engine-stats lines while busy; 0: off
    ray: bool = False  # serve on Ray Serve (app/ray_serve.py) instead of one uvicorn process
    num_replicas: int = 1  # Ray Serve replicas (each one engine)
    ray_address: str | None = None  # an existing Ray cluster (default: start a local one)
    ray_cpus_per_replica: float = 1.0
    ray_max_replicas: int | None = None  # > num_replicas: autoscale on ongoing requests per replica
    embedding_pooling: str = "last"  # /v1/embeddings: last | mean (of the final-norm hidden states)
    responses_store: bool = True  # keep /v1/responses results (OpenAI's store=true) for GET and previous_response_id
    responses_store_size: int = 1000  # responses kept at most (the oldest goes first)
    responses_store_ttl: float = 3600.0  # seconds a stored response is kept
    request_timeout: float = 0.0  # seconds a generation request may run before it is aborted (408); 0: no limit
    stream_send_timeout: float = 30.0  # seconds one SSE event may wait for a client that stopped reading; 0: none
    shutdown_timeout: float = 8.0  # seconds in-flight requests may take to finish after SIGTERM
    webui: bool = True  # serve the built-in chat page at / (app/webui)

    def engine_config(self, model: str | None = None) -> EngineConfig:
        """The EngineConfig these settings ask for, for `model` (default: the first MODEL); ValueError on a
        bad combination."""
        values = {name: getattr(self, name) for name in ENGINE_FIELDS}
        if model is not None:
            values["model"] = model
        values["quantization"] = None if self.quantization == "none" else self.quantization
        return EngineConfig(**values)


# The Settings fields handed to EngineConfig (the ones both have).
ENGINE_FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if f.name in ENGINE_DEFAULTS)


def default_of(name: str) -> Any:
    """The default of the Settings field `name` (a fresh list for list fields)."""
    f = next(f for f in dataclasses.fields(Settings) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
