"""POST /v1/chat/completions: messages -> chat template -> engine -> response or SSE (role chunk first).

The template is the model's (or --chat-template), rendered by the engine's Jinja sandbox in a worker
thread together with tokenization; a template sent in the request is refused. Without max_tokens a
chat answer may run to the context limit.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from model import AsyncEngine, RequestOutput, SamplingParams
from model.sampling_params import MAX_LOGPROBS

from ..errors import bad_request
from ..protocol import SSE_DONE, ChatCompletionRequest, ChatMessage, chat_completion_id, now, sse_frame, usage
from .base import (
    ClientGone,
    Serving,
    SSEResponse,
    build_sampling_params,
    check_common,
    check_context,
    check_text,
    encode_checked,
    error_frame,
    finish_reason,
    generation_error,
    last_item,
    merge_streams,
    until_disconnect,
)

TEXT_PART_TYPES = ("text", "input_text")


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template sees them: string content (text parts joined by newlines)."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type")
                if kind not in TEXT_PART_TYPES:
                    raise bad_request(f"messages[{i}].content[{j}]: only text content parts are supported, "
                                      f"got type {kind!r}", "messages")
                value = part.get("text")
                if not isinstance(value, str):
                    raise bad_request(f"messages[{i}].content[{j}].text must be a string", "messages")
                parts.append(value)
            text = "\n".join(parts)
        check_text(text, "messages")
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": text}
        if m.name is not None:
            check_text(m.name, "messages")
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def render_and_tokenize(engine: AsyncEngine, messages: list[dict[str, Any]], add_generation_prompt: bool,
                        add_special_tokens: bool = False) -> list[int]:
    """The chat template applied, then tokenized (runs in a worker thread). 400 on a template error."""
    try:
        text = engine.engine.render_chat(messages, add_generation_prompt=add_generation_prompt)
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from None
    check_text(text, "messages")
    # The template already holds any BOS text: by default do not add special tokens again.
    return encode_checked(engine.tokenizer, text, add_special_tokens, "messages")


class ChatServing(Serving):
    async def create(self, req: ChatCompletionRequest, raw: Request) -> Response:
        state = self.state
        engine = state.ready_engine()
        model_name = state.resolve_model(req.model)
        rt = engine.engine.runtime
        if req.chat_template is not None:
            raise bad_request("a chat template in the request is not accepted; the server uses the model's "
                              "template or the one given with --chat-template", "chat_template")
        if req.tools and req.tool_choice != "none":
            raise bad_request("tool calling is not supported yet", "tools")
        check_common(req)
        if req.top_logprobs is not None:
            if not req.logprobs:
                raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
            if not 0 <= req.top_logprobs <= MAX_LOGPROBS:
                raise bad_request(f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got {req.top_logprobs}",
                                  "top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.requested_max_tokens()  # None: up to the context limit
        params = build_sampling_params(req, max_tokens, logprobs, rt.vocab_size)
        messages = template_messages(req.messages)

        state.admission.acquire()
        try:
            ids = await asyncio.to_thread(render_and_tokenize, engine, messages, req.add_generation_prompt)
            check_context(len(ids), params.max_tokens, rt.max_model_len, "messages")
        except BaseException:
            state.admission.release()
            raise
        request_id = chat_completion_id()
        created = now()
        info = self.request_info(raw, request_id, bool(req.stream), messages)
        stream = self.generate(ids, params, request_id, info)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            body = self._stream(stream, request_id, created, model_name, params, len(ids), req, include_usage)
            return SSEResponse(body, on_close=state.admission.release)
        try:
            final = await until_disconnect(raw, last_item(stream))
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001
            raise generation_error(exc) from None
        finally:
            state.admission.release()
        return JSONResponse(self._response(final, request_id, created, model_name, params, req))

    def _response(self, out: RequestOutput, request_id: str, created: int, model_name: str,
                  params: SamplingParams, req: ChatCompletionRequest) -> dict:
        fmt = self.formatter(req.return_tokens_as_token_ids) if params.logprobs is not None else None
        choices = []
        completion_tokens = 0
        for c in out.outputs:
            completion_tokens += len(c.token_ids)
            reason = finish_reason(c.finish_reason)
            choices.append({
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": {"content": fmt.chat(c.logprobs or []), "refusal": None} if fmt is not None else None,
                "finish_reason": reason,
                "stop_reason": c.stop_reason,
            })
        choices.sort(key=lambda ch: ch["index"])
        return {"id": request_id, "object": "chat.completion", "created": created, "model": model_name,
                "choices": choices, "usage": usage(len(out.prompt_token_ids), completion_tokens),
                "system_fingerprint": None}

    async def _stream(self, stream: AsyncIterator[RequestOutput], request_id: str, created: int, model_name: str,
                      params: SamplingParams, prompt_tokens: int, req: ChatCompletionRequest,
                      include_usage: bool) -> AsyncIterator[bytes]:
        fmt = self.formatter(req.return_tokens_as_token_ids) if params.logprobs is not None else None
        head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_name}
        extra = {"usage": None} if include_usage else {}
        done = [False] * params.n
        completion_tokens = 0
        try:
            for i in range(params.n):
                yield sse_frame({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}], **extra})
            async for _, out in merge_streams([stream]):
                for c in out.outputs:
                    if done[c.index]:
                        continue
                    logprobs = None
                    if fmt is not None and c.new_logprobs:
                        logprobs = {"content": fmt.chat(c.new_logprobs), "refusal": None}
                    reason = finish_reason(c.finish_reason)
                    if not c.new_text and reason is None and logprobs is None:
                        continue
                    if reason is not None:
                        done[c.index] = True
                        completion_tokens += len(c.token_ids)
                    delta = {"content": c.new_text} if c.new_text else {}
                    choice: dict[str, Any] = {"index": c.index, "delta": delta, "logprobs": logprobs,
                                              "finish_reason": reason}
                    if reason is not None:
                        choice["stop_reason"] = c.stop_reason
                    yield sse_frame({**head, "choices": [choice], **extra})
            if include_usage:
                yield sse_frame({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        except Exception as exc:  # noqa: BLE001 - reported in the stream; the status line is already sent
            yield error_frame(exc)
        yield SSE_DONE
