"""The request model of `POST /v1/responses` (OpenAI's Responses API); unknown fields are ignored.

The shapes of `input` items, `tools`, `tool_choice` and `text.format` are checked where they are turned
into chat messages, tools and a constraint (app/serving/responses_input.py), so that every error names
the Responses field it came from.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # "5" is not an int, false is not 0 (as OpenAI)

    model: str | None = None
    input: str | list[Any] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", ...}}
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    seed: int | None = None  # not in OpenAI's API; vLLM and the others accept it
    # vLLM's sampling extras (the OpenAI SDK sends them through `extra_body`)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
