"""User configuration (frozen) and the model architecture description.

`EngineConfig` is what the user asked for; nothing mutates it. Facts derived at start-up
(KV block count, dtype actually used, EOS ids) live in `engine.runtime.RuntimeInfo`.
`ModelConfig` describes a Llama-family checkpoint, parsed from HF `config.json` or GGUF metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass(frozen=True)
class EngineConfig:
    """Engine options. `model=None` selects the embedded default model."""

    model: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_model_len: int | None = None  # None: the model's own limit
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes for the KV pool (CPU); None: a default
    gpu_memory_utilization: float = 0.85  # fraction of free CUDA memory for the KV pool
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # torch intra-op threads on CPU; None: all cores
    chat_template: str | None = None  # a Jinja template text that overrides the model's
    attention_backend: str = "auto"  # auto | torch_ref | sdpa
    quantization: str | None = None  # None | "fp16": float16 weights, float32 math (CPU, fbgemm)
    block_kernels: bool = True  # CPU fp32: run GGUF Q4_1/Q8_0 weights through the exact block kernels

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], not {self.device!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.kv_cache_memory is not None and self.kv_cache_memory < 1:
            raise ValueError("kv_cache_memory must be a positive number of bytes")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.attention_backend not in ("auto", "torch_ref", "sdpa"):
            raise ValueError(f"attention_backend must be auto, torch_ref or sdpa, not {self.attention_backend!r}")
        if self.quantization not in (None, "fp16"):
            raise ValueError(f"quantization must be fp16 or unset, not {self.quantization!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the decoder needs, with Hugging Face's field meanings."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES' values: llama | mistral | qwen2 | qwen3
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
    sliding_window: int | None = None  # recorded; full attention is used (see README)
    torch_dtype: str | None = None  # dtype the checkpoint was saved in
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> "ModelConfig":
        """Parse a HF `config.json` dict; raises ValueError for unsupported models."""
        if cfg.get("auto_map"):
            raise ValueError("this config needs remote code (auto_map); kvserve only runs built-in architectures")
        archs = cfg.get("architectures") or []
        arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            model_type = cfg.get("model_type")
            if model_type in SUPPORTED_ARCHITECTURES.values():
                arch = model_type
            else:
                raise ValueError(
                    f"unsupported architecture {archs or model_type!r}; supported: "
                    + ", ".join(SUPPORTED_ARCHITECTURES)
                )
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            head_dim = cfg.get("head_dim") or hidden // heads
            # transformers >= 5 writes `rope_parameters` (theta inside); older files `rope_theta` + `rope_scaling`.
            rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
            rope_theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
            kind = rope.get("rope_type", rope.get("type", "default"))
            rope_scaling = rope if kind != "default" else None
            return cls(
                architecture=arch,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(head_dim),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
                qk_norm=arch == "qwen3",
                sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", arch == "mistral") else None,
                torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            )
        except KeyError as exc:
            raise ValueError(f"config.json lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config.json has an invalid value: {exc}") from None
