"""POST /v1/chat/completions: messages -> chat template -> engine -> response or SSE (role chunk first).

The template is the model's (or --chat-template), rendered by the engine's Jinja sandbox in a worker
thread together with tokenization; a template sent in the request is refused. Without max_tokens a
chat answer may run to the context limit. Tools (serving/tools.py): shown in the prompt, the calls
constrained by a grammar and parsed into `tool_calls` (streamed as OpenAI's tool-call deltas).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from model import RequestOutput, SamplingParams

from ..errors import bad_request
from ..protocol import ChatCompletionRequest
from ..responses import SSE_DONE, chat_completion_id, now, sse_frame, usage
from .base import Serving
from .logprobs import finish_reason
from .prompts import render_and_tokenize, template_messages
from .sse import SSEResponse, error_frame
from .streams import merge_streams
from .tools import ToolStream, plan_tools, tool_message
from .validation import check_common


class ChatServing(Serving):
    async def create(self, req: ChatCompletionRequest, raw: Request) -> Response:
        state = self.state
        engine = state.ready_engine(req.model)
        model_name = state.resolve_model(req.model)
        if req.chat_template is not None:
            raise bad_request(
                "a chat template in the request is not accepted; the server uses the model's "
                "template or the one given with --chat-template",
                "chat_template",
            )
        check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None  # its range: SamplingParams
        max_tokens = req.requested_max_tokens()  # None: up to the context limit
        params, tools = plan_tools(req, req.to_sampling_params(max_tokens, logprobs))
        messages = template_messages(req.messages)

        request_id = chat_completion_id()
        state.admission.acquire()
        try:
            ids = await asyncio.to_thread(
                render_and_tokenize, engine, messages, req.add_generation_prompt, False, tools.tools, tools.tool_choice
            )
            streams = await self.submit(engine, [(request_id, ids)], params, "messages")
        except BaseException:
            state.admission.release()
            raise
        created = now()
        info = self.request_info(raw, request_id, bool(req.stream), messages)
        gen = self.generation(streams, [len(ids)], params, info)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            body = self._stream(
                gen.outputs[0], request_id, created, model_name, params, len(ids), req, include_usage, tools.parse
            )
            return SSEResponse(body, on_close=gen.aclose, send_timeout=self.state.settings.stream_send_timeout)
        finals = await self.final_outputs(raw, gen)
        if finals is None:
            return Response(status_code=499)
        return JSONResponse(self._response(finals[0], request_id, created, model_name, params, req, tools.parse))

    def _response(
        self,
        out: RequestOutput,
        request_id: str,
        created: int,
        model_name: str,
        params: SamplingParams,
        req: ChatCompletionRequest,
        parse_tools: bool = False,
    ) -> dict:
        fmt = self.formatter(req.return_tokens_as_token_ids, model_name) if params.logprobs is not None else None
        choices = []
        completion_tokens = 0
        for c in out.outputs:
            completion_tokens += len(c.token_ids)
            reason = finish_reason(c.finish_reason)
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            if parse_tools:
                message, reason = tool_message(c.text, reason)
            choices.append(
                {
                    "index": c.index,
                    "message": message,
                    "logprobs": {"content": fmt.chat(c.logprobs or []), "refusal": None} if fmt is not None else None,
                    "finish_reason": reason,
                    "stop_reason": c.stop_reason,
                }
            )
        choices.sort(key=lambda ch: ch["index"])
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": usage(len(out.prompt_token_ids), completion_tokens),
            "system_fingerprint": None,
        }

    async def _stream(
        self,
        stream: AsyncIterator[RequestOutput],
        request_id: str,
        created: int,
        model_name: str,
        params: SamplingParams,
        prompt_tokens: int,
        req: ChatCompletionRequest,
        include_usage: bool,
        parse_tools: bool = False,
    ) -> AsyncIterator[bytes]:
        fmt = self.formatter(req.return_tokens_as_token_ids, model_name) if params.logprobs is not None else None
        head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_name}
        extra = {"usage": None} if include_usage else {}
        done = [False] * params.n
        tool_streams = [ToolStream() for _ in range(params.n)] if parse_tools else None
        completion_tokens = 0
        try:
            for i in range(params.n):
                yield sse_frame(
                    {
                        **head,
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                        **extra,
                    }
                )
            async for _, out in merge_streams([stream]):
                for c in out.outputs:
                    if done[c.index]:
                        continue
                    logprobs = None
                    if fmt is not None and c.new_logprobs:
                        logprobs = {"content": fmt.chat(c.new_logprobs), "refusal": None}
                    reason = finish_reason(c.finish_reason)
                    if tool_streams is not None:
                        deltas, reason = tool_streams[c.index].deltas(c.new_text, reason)
                    else:
                        deltas = [{"content": c.new_text}] if c.new_text else []
                    if not deltas and reason is None and logprobs is None:
                        continue
                    if reason is not None:
                        done[c.index] = True
                        completion_tokens += len(c.token_ids)
                    for early in deltas[:-1]:  # tool-call pieces: one chunk each
                        piece = {"index": c.index, "delta": early, "logprobs": None, "finish_reason": None}
                        yield sse_frame({**head, "choices": [piece], **extra})
                    delta = deltas[-1] if deltas else {}
                    choice: dict[str, Any] = {
                        "index": c.index,
                        "delta": delta,
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }
                    if reason is not None:
                        choice["stop_reason"] = c.stop_reason
                    yield sse_frame({**head, "choices": [choice], **extra})
            if include_usage:
                yield sse_frame({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        except Exception as exc:  # noqa: BLE001 - reported in the stream; the status line is already sent
            yield error_frame(exc)
        yield SSE_DONE
