"""POST /v1/embeddings: each input through the engine as a prompt-only request, pooled and L2-normalized.

`input`: a string, a list of strings, token ids, or a list of token-id lists (at most MAX_PROMPTS); texts
get the tokenizer's special tokens, as for completions. Pooling of the final-norm hidden states:
`--embedding-pooling last` (default: the last token) or `mean`. `dimensions` keeps the first N values and
renormalizes them (OpenAI's text-embedding-3 semantics); `encoding_format` float or base64 (little-endian
float32, what the openai SDK asks for by default). The requests run batched with generation requests.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from model import SamplingParams

from ..errors import bad_request
from ..protocol import EmbeddingRequest
from .base import Serving
from .prompts import encode_text, normalize_prompts


def _shaped(vector: list[float], dimensions: int | None) -> list[float]:
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return [v / norm for v in head] if norm > 0 else head


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class EmbeddingServing(Serving):
    async def create(self, req: EmbeddingRequest, raw: Request) -> Response:
        state = self.state
        engine = state.ready_engine(req.model)
        model_name = state.resolve_model(req.model)
        if req.encoding_format not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        if req.dimensions is not None and req.dimensions < 1:
            raise bad_request("'dimensions' must be at least 1", "dimensions")
        prompts = normalize_prompts(req.input, "input")
        if any(p == "" for p in prompts):
            raise bad_request("'input' must not contain empty strings", "input")
        pooling = state.settings.embedding_pooling
        request_id = f"embd-{uuid.uuid4().hex}"
        state.admission.acquire()
        try:
            ids = await asyncio.to_thread(
                lambda: [encode_text(engine, p, True, "input") if isinstance(p, str) else p for p in prompts]
            )
            params = SamplingParams(max_tokens=1)
            timeout = state.settings.request_timeout or None
            streams = []
            try:
                for i, prompt_ids in enumerate(ids):
                    rid = f"{request_id}-{i}"
                    streams.append(await engine.submit(prompt_ids, params, rid, "input", False, pooling, timeout))
            except BaseException:
                for stream in streams:
                    await stream.aclose()
                raise
        except BaseException:
            state.admission.release()
            raise
        info = self.request_info(raw, request_id, False, prompts)
        gen = self.generation(streams, [len(p) for p in ids], params, info)
        finals = await self.final_outputs(raw, gen)
        if finals is None:
            return Response(status_code=499)
        data = []
        for index, out in enumerate(finals):
            vector = _shaped(out.embedding or [], req.dimensions)
            data.append({"object": "embedding", "index": index, "embedding": _encoded(vector, req.encoding_format)})
        tokens = sum(len(p) for p in ids)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
