"""kvserve's engine: load a model, generate with a paged KV cache and continuous batching.

    from model import LLM, SamplingParams
    llm = LLM()  # the embedded SmolLM2-135M-Instruct
    print(llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=16))[0].text)

The public names are imported on first use (PEP 562), so `from model import EngineConfig` or an
error type does not pull in torch: `kvserve serve --help` answers at once.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it
_EXPORTS = {
    "EngineConfig": ".config",
    "ModelConfig": ".config",
    "AsyncEngine": ".engine.async_engine",
    "RequestStream": ".engine.async_engine",
    "LLM": ".engine.llm",
    "LLMEngine": ".engine.llm_engine",
    "RuntimeInfo": ".engine.runtime",
    "EngineStats": ".engine.stats",
    "ContextLengthError": ".errors",
    "EngineDeadError": ".errors",
    "StepFailedError": ".errors",
    "RequestTimeoutError": ".errors",
    "InvalidParamError": ".errors",
    "ModelLoadError": ".errors",
    "RequestAbortedError": ".errors",
    "CompletionOutput": ".outputs",
    "Logprob": ".outputs",
    "RequestMetrics": ".outputs",
    "RequestOutput": ".outputs",
    "TokenLogprobs": ".outputs",
    "SamplingParams": ".sampling_params",
    "StructuredOutputs": ".structured.spec",
    "ToolCall": ".tools.parser",
    "ToolCallDelta": ".tools.parser",
    "ToolCallParser": ".tools.parser",
    "parse_tool_calls": ".tools.parser",
    "check_tool_choice": ".tools.grammar",
    "check_tools": ".tools.grammar",
    "tool_constraint": ".tools.grammar",
    "with_tool_grammar": ".tools.grammar",
}

__all__ = [
    "AsyncEngine",
    "CompletionOutput",
    "ContextLengthError",
    "EngineConfig",
    "EngineDeadError",
    "StepFailedError",
    "RequestTimeoutError",
    "EngineStats",
    "InvalidParamError",
    "LLM",
    "LLMEngine",
    "Logprob",
    "ModelConfig",
    "ModelLoadError",
    "RequestAbortedError",
    "RequestMetrics",
    "RequestOutput",
    "RequestStream",
    "RuntimeInfo",
    "SamplingParams",
    "TokenLogprobs",
    "StructuredOutputs",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "check_tool_choice",
    "check_tools",
    "parse_tool_calls",
    "tool_constraint",
    "with_tool_grammar",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


if TYPE_CHECKING:
    from .config import EngineConfig, ModelConfig
    from .engine.async_engine import AsyncEngine, RequestStream
    from .engine.llm import LLM
    from .engine.llm_engine import LLMEngine
    from .engine.runtime import RuntimeInfo
    from .engine.stats import EngineStats
    from .errors import (
        ContextLengthError,
        EngineDeadError,
        InvalidParamError,
        ModelLoadError,
        RequestAbortedError,
        RequestTimeoutError,
        StepFailedError,
    )
    from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, TokenLogprobs
    from .sampling_params import SamplingParams
    from .structured.spec import StructuredOutputs
    from .tools.grammar import check_tool_choice, check_tools, tool_constraint, with_tool_grammar
    from .tools.parser import ToolCall, ToolCallDelta, ToolCallParser, parse_tool_calls
