"""POST /v1/completions: prompt forms (str, [str], [int], [[int]]) -> engine -> response or SSE.

Each prompt is one engine request (all `n` choices of it in one stream); the prompts run
concurrently and choice `index` = prompt_index * n + choice. Usage: every prompt's tokens once,
every choice's generated tokens. A `suffix` makes each prompt a fill-in-the-middle prompt (serving/fim.py)
where the model has FIM tokens, else it is a 400.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from model import AsyncEngine, RequestOutput, SamplingParams

from ..errors import bad_request
from ..protocol import MAX_CHOICES, CompletionRequest
from ..responses import SSE_DONE, completion_id, now, sse_frame, usage
from ..state import ServerState
from .base import Serving
from .fim import FimTokens, encode_fim_prompts, find_fim_tokens, require_fim
from .logprobs import finish_reason
from .prompts import encode_prompts, normalize_prompts
from .sse import SSEResponse, error_frame
from .streams import merge_streams
from .validation import check_common, check_text

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class CompletionServing(Serving):
    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._fim: dict[int, FimTokens | None] = {}

    async def create(self, req: CompletionRequest, raw: Request) -> Response:
        state = self.state
        engine = state.ready_engine(req.model)
        model_name = state.resolve_model(req.model)
        check_common(req)
        prompts = normalize_prompts(req.prompt)
        fim = None
        if req.suffix:  # "" or null: no suffix
            check_text(req.suffix, "suffix")
            fim = require_fim(self._fim_tokens(engine))
        if req.echo and req.logprobs is not None:
            raise bad_request(
                "'echo' together with 'logprobs' needs prompt logprobs, which are not supported yet", "echo"
            )
        max_tokens = req.requested_max_tokens()
        params = req.to_sampling_params(DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, req.logprobs)
        if req.best_of is not None and req.best_of != params.n:
            raise bad_request("'best_of' is not supported (only best_of == n)", "best_of")
        if len(prompts) * params.n > MAX_CHOICES:
            raise bad_request(f"prompts x n may be at most {MAX_CHOICES}", "n")

        request_id = completion_id()
        state.admission.acquire()
        try:
            if fim is not None:
                prepared = await asyncio.to_thread(encode_fim_prompts, engine, fim, prompts, req.suffix, req.echo)
            else:
                prepared = await asyncio.to_thread(encode_prompts, engine, prompts, req.echo)
            streams = await self.submit(
                engine, [(f"{request_id}-{i}", ids) for i, (ids, _) in enumerate(prepared)], params, "prompt"
            )
        except BaseException:
            state.admission.release()
            raise
        created = now()
        info = self.request_info(raw, request_id, bool(req.stream), prompts[0] if len(prompts) == 1 else prompts)
        gen = self.generation(streams, [len(ids) for ids, _ in prepared], params, info)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            body = self._stream(gen.outputs, request_id, created, model_name, params, prepared, req, include_usage)
            return SSEResponse(body, on_close=gen.aclose, send_timeout=self.state.settings.stream_send_timeout)
        finals = await self.final_outputs(raw, gen)
        if finals is None:
            return Response(status_code=499)
        return JSONResponse(self._response(finals, request_id, created, model_name, params, prepared, req))

    def _fim_tokens(self, engine: AsyncEngine) -> FimTokens | None:
        """The fill-in-the-middle tokens of `engine`'s model, looked up once per engine."""
        key = id(engine)  # the engines live as long as the server
        if key not in self._fim:
            self._fim[key] = find_fim_tokens(engine)
        return self._fim[key]

    def _response(
        self,
        finals: list[RequestOutput],
        request_id: str,
        created: int,
        model_name: str,
        params: SamplingParams,
        prepared: list[tuple[list[int], str]],
        req: CompletionRequest,
    ) -> dict:
        fmt = self.formatter(req.return_tokens_as_token_ids, model_name) if params.logprobs is not None else None
        choices = []
        prompt_tokens = completion_tokens = 0
        for pi, out in enumerate(finals):
            prompt_tokens += len(out.prompt_token_ids)
            for c in out.outputs:
                completion_tokens += len(c.token_ids)
                logprobs = fmt.legacy(c.logprobs or [], 0)[0] if fmt is not None else None
                reason = finish_reason(c.finish_reason)
                choices.append(
                    {
                        "index": pi * params.n + c.index,
                        "text": prepared[pi][1] + c.text if req.echo else c.text,
                        "logprobs": logprobs,
                        "finish_reason": reason,
                        "stop_reason": c.stop_reason,
                    }
                )
        choices.sort(key=lambda ch: ch["index"])
        return {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
            "system_fingerprint": None,
        }

    async def _stream(
        self,
        streams: list[AsyncIterator[RequestOutput]],
        request_id: str,
        created: int,
        model_name: str,
        params: SamplingParams,
        prepared: list[tuple[list[int], str]],
        req: CompletionRequest,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        n = params.n
        fmt = self.formatter(req.return_tokens_as_token_ids, model_name) if params.logprobs is not None else None
        num_choices = len(prepared) * n
        done = [False] * num_choices
        echo_pending = [req.echo] * num_choices
        offsets = [0] * num_choices
        completion_tokens = 0
        head = {"id": request_id, "object": "text_completion", "created": created, "model": model_name}
        try:
            async for pi, out in merge_streams(streams):
                for c in out.outputs:
                    index = pi * n + c.index
                    if done[index]:
                        continue
                    text = c.new_text
                    if echo_pending[index]:
                        text = prepared[pi][1] + text
                        echo_pending[index] = False
                    logprobs = None
                    if fmt is not None and c.new_logprobs:
                        logprobs, offsets[index] = fmt.legacy(c.new_logprobs, offsets[index])
                    reason = finish_reason(c.finish_reason)
                    if not text and reason is None and logprobs is None:
                        continue
                    if reason is not None:
                        done[index] = True
                        completion_tokens += len(c.token_ids)
                    chunk: dict[str, Any] = {
                        **head,
                        "choices": [
                            {
                                "index": index,
                                "text": text,
                                "logprobs": logprobs,
                                "finish_reason": reason,
                                "stop_reason": c.stop_reason if reason is not None else None,
                            }
                        ],
                    }
                    if include_usage:
                        chunk["usage"] = None
                    yield sse_frame(chunk)
            if include_usage:
                prompt_tokens = sum(len(ids) for ids, _ in prepared)
                yield sse_frame({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        except Exception as exc:  # noqa: BLE001 - reported in the stream; the status line is already sent
            yield error_frame(exc)
        yield SSE_DONE
