"""POST /v1/responses (OpenAI's Responses API), served by the chat path: the input items become chat
messages (serving/responses_input.py), `instructions` a system message, `text.format` the structured-output
constraint and function `tools` the tool grammar; the answer becomes output items and, streamed, OpenAI's
event sequence (serving/responses_output.py). With `store` (the default) the finished response is kept
(app/response_store.py) for GET / DELETE / input_items and for `previous_response_id`, which continues the
stored conversation (its prompt then starts with the earlier turns: a prefix-cache hit).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Iterator

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from model import InvalidParamError, RequestOutput, parse_tool_calls

from ..errors import INVALID_REQUEST, APIError, api_error_of, bad_request
from ..protocol import ChatCompletionRequest
from ..protocol_responses import ResponsesRequest
from ..responses import now
from .base import Serving
from .logprobs import finish_reason
from .prompts import render_and_tokenize, template_messages
from .responses_input import (
    chat_tool_choice,
    chat_tools,
    input_messages,
    new_id,
    output_as_message,
    response_format,
)
from .responses_output import EventWriter, call_item, event_frame, message_item, response_object, status_of, usage
from .sse import SSEResponse
from .streams import merge_streams
from .tools import ToolStream, plan_tools
from .validation import check_common

# chat-completions field -> the Responses field a client wrote
_RENAMED = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
}
_SAMPLING_EXTRAS = (
    "seed",
    "top_k",
    "min_p",
    "repetition_penalty",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
)


@contextlib.contextmanager
def responses_names() -> Iterator[None]:
    """Errors raised inside name the Responses field (max_output_tokens, input, text.format)."""
    try:
        yield
    except InvalidParamError as exc:
        new = _RENAMED.get(exc.param or "")
        if new is not None:
            exc.args = (str(exc).replace(exc.param or "", new, 1),)
            exc.param = new
        raise


def not_found(response_id: str, param: str | None = None, status: int = 404) -> APIError:
    code = "previous_response_not_found" if param else "response_not_found"
    return APIError(status, f"Response with id '{response_id}' not found.", INVALID_REQUEST, param, code)


class ResponsesServing(Serving):
    async def create(self, req: ResponsesRequest, raw: Request) -> Response:
        state = self.state
        engine = state.ready_engine(req.model)
        model_name = state.resolve_model(req.model)
        store = state.responses
        prior: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            found = store.get(req.previous_response_id) if store is not None else None
            if found is None:
                raise not_found(req.previous_response_id, "previous_response_id", 400)
            prior = found.conversation
        new_messages, input_items = input_messages(req.input)
        conversation = prior + new_messages
        if not conversation:
            raise bad_request("'input' must contain at least one message", "input")
        tools = chat_tools(req.tools)
        chat_req = self._chat_request(req, conversation, tools)
        with responses_names():
            check_common(chat_req)
            params, plan = plan_tools(chat_req, chat_req.to_sampling_params(chat_req.requested_max_tokens(), None))
        messages = template_messages(chat_req.messages)

        response_id = new_id("resp")
        state.admission.acquire()
        try:
            ids = await asyncio.to_thread(
                render_and_tokenize, engine, messages, True, False, plan.tools, plan.tool_choice
            )
            with responses_names():
                streams = await self.submit(engine, [(response_id, ids)], params, "input")
        except BaseException:
            state.admission.release()
            raise
        echo = self._echo(req, response_id, model_name)
        info = self.request_info(raw, response_id, bool(req.stream), messages)
        gen = self.generation(streams, [len(ids)], params, info)
        keep = (input_items, conversation) if store is not None and req.store is not False else None
        if req.stream:
            return SSEResponse(
                self._stream(gen.outputs[0], echo, plan.parse, len(ids), keep),
                on_close=gen.aclose,
                send_timeout=self.state.settings.stream_send_timeout,
            )
        finals = await self.final_outputs(raw, gen)
        if finals is None:
            return Response(status_code=499)
        choice = finals[0].outputs[0]
        output = self._output_items(choice.text, plan.parse)
        status, details = status_of(finish_reason(choice.finish_reason))
        body = response_object(
            echo, status, output, incomplete_details=details, usage=usage(len(ids), len(choice.token_ids))
        )
        self._keep(body, keep)
        return JSONResponse(body)

    @staticmethod
    def _chat_request(
        req: ResponsesRequest, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> ChatCompletionRequest:
        system = [{"role": "system", "content": req.instructions}] if req.instructions else []
        fields: dict[str, Any] = {
            "messages": system + conversation,
            "max_completion_tokens": req.max_output_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "tools": tools,
            "tool_choice": chat_tool_choice(req.tool_choice, tools is not None),
            "parallel_tool_calls": req.parallel_tool_calls,
            "response_format": response_format(req.text),
            **{name: getattr(req, name) for name in _SAMPLING_EXTRAS},
        }
        try:
            return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise bad_request(f"invalid input item: {first.get('msg')} ({where})", "input") from None

    @staticmethod
    def _echo(req: ResponsesRequest, response_id: str, model_name: str) -> dict[str, Any]:
        """The request's settings, as every response object of this request repeats them."""
        fmt = (req.text or {}).get("format") or {"type": "text"}
        return {
            "id": response_id,
            "created_at": now(),
            "model": model_name,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "tool_choice": req.tool_choice or "auto",
            "tools": [t for t in req.tools or [] if isinstance(t, dict) and t.get("type") == "function"],
            "text": {"format": fmt},
            "store": req.store is not False,
            "metadata": req.metadata or {},
            "user": req.user,
            "truncation": "disabled",
            "reasoning": None,
            "background": False,
        }

    @staticmethod
    def _output_items(text: str, parse_tools: bool) -> list[dict[str, Any]]:
        if not parse_tools:
            return [message_item(text)]
        content, calls = parse_tool_calls(text)
        items = [message_item(content)] if content else []
        return items + [call_item(c.id, c.name, c.arguments) for c in calls]

    def _keep(self, body: dict[str, Any], keep: tuple[list, list] | None) -> None:
        if keep is None or self.state.responses is None:
            return
        input_items, conversation = keep
        answer = output_as_message(body["output"])
        self.state.responses.put(body, input_items, conversation + ([answer] if answer else []))

    async def _stream(
        self,
        stream: AsyncIterator[RequestOutput],
        echo: dict[str, Any],
        parse_tools: bool,
        prompt_tokens: int,
        keep: tuple[list, list] | None,
    ) -> AsyncIterator[bytes]:
        writer = EventWriter(echo)
        tool_stream = ToolStream() if parse_tools else None
        try:
            for kind, payload in writer.start():
                yield event_frame(kind, payload)
            async for _, out in merge_streams([stream]):
                c = out.outputs[0]
                reason = finish_reason(c.finish_reason)
                if tool_stream is not None:
                    deltas, reason = tool_stream.deltas(c.new_text, reason)
                else:
                    deltas = [{"content": c.new_text}] if c.new_text else []
                for delta in deltas:
                    for kind, payload in self._delta_events(writer, delta):
                        yield event_frame(kind, payload)
                if reason is not None:
                    for kind, payload in writer.finish(reason, usage(prompt_tokens, len(c.token_ids))):
                        yield event_frame(kind, payload)
                    self._keep(writer.final, keep)
                    return
        except Exception as exc:  # noqa: BLE001 - reported in the stream; the status line is already sent
            err = api_error_of(exc)
            for kind, payload in writer.fail(err.code or err.type, err.message):
                yield event_frame(kind, payload)

    @staticmethod
    def _delta_events(writer: EventWriter, delta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if "content" in delta:
            return writer.text(delta["content"]) if delta["content"] else []
        call = delta["tool_calls"][0]
        events = writer.call_start(call["id"], call["function"]["name"]) if "id" in call else []
        return events + writer.call_arguments(call["function"].get("arguments") or "")
