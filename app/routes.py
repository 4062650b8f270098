"""The HTTP routes: thin functions that hand over to the serving classes (made in main.create_app)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from . import __version__
from .errors import INVALID_REQUEST, APIError, api_error_response
from .metrics import CONTENT_TYPE_LATEST
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from .protocol_responses import ResponsesRequest
from .response_store import StoredResponse
from .responses import model_card
from .serving.responses import not_found
from .state import ServerState

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.kv


@router.get("/health")
async def health(request: Request) -> Response:
    """200 when serving; 503 while loading, draining or after engine death."""
    err = _state(request).health_error()
    if err is not None:
        return api_error_response(err)
    return JSONResponse({"status": "ok"})


@router.get("/version")
async def version() -> Response:
    return JSONResponse({"version": __version__})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _cards(state: ServerState) -> list[dict]:
    state.ready_engine()
    cards = []
    for name in state.served_names:
        engine = state.engines[name]
        cards.append(model_card(name, state.created, engine.model_path, engine.runtime.max_model_len))
    return cards


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _cards(_state(request))})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    for card in _cards(_state(request)):
        if card["id"] == model_id:
            return JSONResponse(card)
    raise APIError(404, f"The model '{model_id}' does not exist", INVALID_REQUEST, "model", "model_not_found")


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await request.app.state.completions.create(body, request)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await request.app.state.chat.create(body, request)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await request.app.state.embeddings.create(body, request)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    return await request.app.state.tokenizing.tokenize(body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    return await request.app.state.tokenizing.detokenize(body)


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    return await request.app.state.responses.create(body, request)


def _stored(request: Request, response_id: str) -> StoredResponse:
    store = _state(request).responses
    found = store.get(response_id) if store is not None else None
    if found is None:
        raise not_found(response_id)
    return found


@router.api_route("/v1/responses/{response_id}", methods=["GET", "DELETE"])
async def stored_response(response_id: str, request: Request) -> Response:
    """GET: the stored response; DELETE: forget it (one route, so a 405 lists both methods)."""
    if request.method == "GET":
        return JSONResponse(_stored(request, response_id).response)
    store = _state(request).responses
    if store is None or not store.delete(response_id):
        raise not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
async def response_input_items(response_id: str, request: Request) -> Response:
    items = _stored(request, response_id).input_items
    first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
    return JSONResponse({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": False})
