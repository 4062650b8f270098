"""kvserve's engine: load a model, generate with a paged KV cache and continuous batching.

    from model import LLM, SamplingParams
    llm = LLM()  # the embedded SmolLM2-135M-Instruct
    print(llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=16))[0].text)
"""
from .config import EngineConfig, ModelConfig
from .engine.async_engine import AsyncEngine, RequestStream
from .engine.llm import LLM
from .engine.llm_engine import LLMEngine
from .engine.runtime import RuntimeInfo
from .engine.stats import EngineStats
from .errors import ContextLengthError, EngineDeadError, InvalidParamError, ModelLoadError, RequestAbortedError
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, TokenLogprobs
from .sampling_params import SamplingParams

__all__ = [
    "LLM",
    "AsyncEngine",
    "ContextLengthError",
    "EngineStats",
    "InvalidParamError",
    "RequestStream",
    "RuntimeInfo",
    "EngineConfig",
    "EngineDeadError",
    "LLMEngine",
    "ModelConfig",
    "ModelLoadError",
    "SamplingParams",
    "RequestOutput",
    "RequestMetrics",
    "RequestAbortedError",
    "CompletionOutput",
    "Logprob",
    "TokenLogprobs",
]
