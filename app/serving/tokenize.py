"""POST /tokenize and POST /detokenize, with vLLM's request and response shapes.

/tokenize takes a `prompt` (special tokens added by default) or chat `messages` (rendered with the
chat template; special tokens not added again by default) and answers
{"count", "max_model_len", "tokens", "token_strs"}. /detokenize answers {"prompt"}.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse

from ..errors import bad_request
from ..protocol import DetokenizeRequest, TokenizeRequest
from .base import Serving
from .prompts import encode_text, render_and_tokenize, template_messages
from .validation import check_text, check_token_ids


class TokenizeServing(Serving):
    async def tokenize(self, req: TokenizeRequest) -> JSONResponse:
        engine = self.state.ready_engine(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("send exactly one of 'prompt' or 'messages'", "prompt")
        if req.messages is not None:
            if not req.messages:
                raise bad_request("'messages' is empty", "messages")
            messages = template_messages(req.messages)
            special = bool(req.add_special_tokens)
            ids = await asyncio.to_thread(render_and_tokenize, engine, messages, req.add_generation_prompt, special)
        else:
            assert req.prompt is not None
            check_text(req.prompt, "prompt")
            special = True if req.add_special_tokens is None else req.add_special_tokens
            ids = await asyncio.to_thread(encode_text, engine, req.prompt, special, "prompt")
        strs = engine.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return JSONResponse(
            {"count": len(ids), "max_model_len": engine.runtime.max_model_len, "tokens": ids, "token_strs": strs}
        )

    async def detokenize(self, req: DetokenizeRequest) -> JSONResponse:
        engine = self.state.ready_engine(req.model)
        check_token_ids(req.tokens, engine.runtime.vocab_size, "tokens")
        text = await asyncio.to_thread(engine.tokenizer.decode, req.tokens, False)
        return JSONResponse({"prompt": text})
