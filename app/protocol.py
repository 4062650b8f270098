"""Request models (pydantic); the response builders are in app/responses.py.

OpenAI's fields plus vLLM's common sampling extras; unknown fields are ignored. pydantic checks the
JSON types and the per-role message rules; range checks live in SamplingParams, built by
`to_sampling_params`, whose InvalidParamError names the request's own field (`request_field`);
app.errors turns it into a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from model import InvalidParamError, SamplingParams

from .structured_request import FIELDS as STRUCTURED_FIELDS
from .structured_request import structured_outputs_of

MAX_PROMPTS = 128  # prompts in one /v1/completions request
MAX_CHOICES = 256  # prompts * n
MAX_MESSAGES = 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # "5" is not an int, false is not 0 (as OpenAI)


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ResponseFormat(_Request):
    """OpenAI's response_format; the JSON modes are mapped by app/structured_request.py."""

    type: str = "text"
    json_schema: Any = None  # {"name", "schema", "strict", "description"}
    schema_: Any = Field(default=None, alias="schema")  # llama.cpp: {"type": "json_object", "schema": {...}}


class SamplingRequest(_Request):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM's sampling extras (the OpenAI SDK sends them through `extra_body`)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    return_tokens_as_token_ids: bool = False  # logprob tokens as "token_id:<id>" (vLLM's extra)
    # Structured outputs (one constraint per request; shapes checked by app/structured_request.py):
    structured_outputs: Any = None  # vLLM: {"json" | "regex" | "choice" | "grammar" | "json_object": ...}
    guided_json: Any = None  # vLLM's older names
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    json_schema: Any = None  # llama.cpp: a JSON schema
    grammar: Any = None  # llama.cpp: GBNF (or Lark) text

    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens (the newer name) or max_tokens; None if neither was sent."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def request_field(self, param: str | None) -> str | None:
        """The name this request gave SamplingParams' field `param` (max_completion_tokens is an alias)."""
        if param == "max_tokens" and self.max_completion_tokens is not None:
            return "max_completion_tokens"
        return param

    def to_sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """SamplingParams for this request; InvalidParamError naming the request's field on a bad value."""
        bias = None
        if self.logit_bias:
            bias = {}
            for key, value in self.logit_bias.items():
                try:
                    bias[int(key)] = float(value)
                except ValueError:
                    raise InvalidParamError(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        structured = structured_outputs_of({name: getattr(self, name) for name in STRUCTURED_FIELDS})
        try:
            return SamplingParams(
                n=1 if self.n is None else self.n,
                max_tokens=max_tokens,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=0 if self.top_k is None else self.top_k,
                min_p=0.0 if self.min_p is None else self.min_p,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
                logit_bias=bias,
                seed=self.seed,
                stop=self.stop,
                stop_token_ids=self.stop_token_ids,
                ignore_eos=self.ignore_eos,
                min_tokens=self.min_tokens,
                logprobs=logprobs,
                skip_special_tokens=self.skip_special_tokens,
                include_stop_str_in_output=self.include_stop_str_in_output,
                structured_outputs=structured,
            )
        except InvalidParamError as exc:
            field = self.request_field(exc.param)
            if exc.param is None or field is None or field == exc.param:
                raise
            raise InvalidParamError(str(exc).replace(exc.param, field, 1), field) from None


class CompletionRequest(SamplingRequest):
    prompt: Any = Field(  # str | [str] | [int] | [[int]], checked by the serving layer for clear messages
        default=None, json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array"}]}
    )
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


def _invalid(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose text is `message` as written (the 400 handler prefixes the field)."""
    return PydanticCustomError(kind, message)


class FunctionCall(_Request):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Request):
    """One item of an assistant message's `tool_calls`: {"id", "type": "function", "function"}."""

    id: str
    type: Literal["function"]
    function: FunctionCall


# Checked as a ToolCall, then kept as the plain dict (unknown keys dropped) the chat template expects.
TemplateToolCall = Annotated[ToolCall, AfterValidator(lambda call: call.model_dump())]

CONTENT_ROLES = ("system", "developer", "user")


class ChatMessage(_Request):
    """One chat message, checked per role as OpenAI does (`check_role`); content parts other than
    text are refused by the serving layer."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[TemplateToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def check_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise _invalid("content_type", "content must be a string or a list of content parts")
        if not value:
            raise _invalid("content_empty", "content must not be an empty list of content parts")
        for j, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _invalid("content_part", f"content[{j}] must be an object with a string 'type'")
        return value

    @model_validator(mode="after")
    def check_role(self) -> "ChatMessage":
        role = self.role
        if role in CONTENT_ROLES and self.content is None:
            raise _invalid(
                "message_content", f"a '{role}' message needs 'content' (a string or a list of content parts)"
            )
        if role == "assistant" and self.content is None and not self.tool_calls:
            raise _invalid("message_content", "an 'assistant' message needs 'content' or 'tool_calls'")
        if role == "tool":
            if self.tool_call_id is None:
                raise _invalid("message_tool_call_id", "a 'tool' message needs 'tool_call_id' (a string)")
            if self.content is None:
                raise _invalid("message_content", "a 'tool' message needs 'content'")
        if role == "function" and self.name is None:
            raise _invalid("message_name", "a 'function' message needs 'name'")
        return self


TOOL_CHOICE_MODES = ("none", "auto", "required")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # checked by check_tool_choice
    parallel_tool_calls: bool | None = None  # None: true (several calls allowed)
    chat_template: str | None = None  # refused: templates come from the model or --chat-template
    add_generation_prompt: bool = True

    def request_field(self, param: str | None) -> str | None:
        # Chat's `logprobs` is a flag; the number of alternatives (SamplingParams.logprobs) is `top_logprobs`.
        return "top_logprobs" if param == "logprobs" else super().request_field(param)

    @field_validator("tool_choice", mode="before")
    @classmethod
    def check_tool_choice(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        named = (
            isinstance(value, dict)
            and value.get("type") == "function"
            and isinstance(value.get("function"), dict)
            and isinstance(value["function"].get("name"), str)
        )
        if not named and not (isinstance(value, str) and value in TOOL_CHOICE_MODES):
            raise _invalid(
                "tool_choice",
                'must be "none", "auto", "required" or {"type": "function", "function": {"name": "<tool name>"}}',
            )
        if (named or value == "required") and not info.data.get("tools"):
            raise _invalid("tool_choice", "a required or named tool choice needs 'tools'")
        return value


class TokenizeRequest(_Request):
    """vLLM's /tokenize: either `prompt` or chat `messages`."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES)
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[StrictInt]


class EmbeddingRequest(_Request):
    model: str | None = None
    input: Any = None  # a string, strings, token ids or token-id lists (checked by serving/prompts.py)
    encoding_format: str = "float"
    dimensions: StrictInt | None = None
    user: str | None = None
