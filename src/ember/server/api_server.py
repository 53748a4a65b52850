"""The FastAPI app: OpenAI routes, health, metrics, and the engine thread's lifetime."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ember.server.async_engine import AsyncEngine
from ember.server.errors import error_response, install_error_handlers
from ember.server.metrics import ServerMetrics
from ember.server.middleware import APIKeyMiddleware, BodyLimitMiddleware
from ember.server.protocol import ChatCompletionRequest, CompletionRequest
from ember.server.serving_chat import create_chat_completion
from ember.server.serving_common import ServerState, check_model, state_of
from ember.server.serving_completion import create_completion

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def build_app(llm, model_name: str, api_key: str | None = None, max_num_seqs: int = 256, max_queue: int = 1024,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The app around an already loaded ``ember.LLM``; the engine thread runs while the app does."""
    metrics = ServerMetrics(model_name)
    engine = AsyncEngine(llm.engine, max_num_seqs=max_num_seqs, max_queue=max_queue, metrics=metrics)
    state = ServerState(llm=llm, engine=engine, model_name=model_name, metrics=metrics, api_key=api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="Ember", summary="OpenAI-compatible server for Qwen3", version="0.1.0", lifespan=lifespan)
    app.state.ember = state
    install_error_handlers(app)
    _add_routes(app)
    # The last added runs first: the size limit before the key check, so a huge body is never read.
    app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    return app


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "ember",
            "max_model_len": state.max_model_len}


def _add_routes(app: FastAPI) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await create_chat_completion(state_of(request), body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await create_completion(state_of(request), body, request)

    @app.get("/v1/models")
    async def list_models(request: Request):
        return {"object": "list", "data": [_model_card(state_of(request))]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request):
        state = state_of(request)
        check_model(state, model)
        return _model_card(state)

    @app.get("/health")
    async def health(request: Request):
        if not state_of(request).engine.is_alive:
            return error_response(503, "The engine thread is not running.", code="engine_unavailable")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics(request: Request):
        state = state_of(request)
        return Response(state.metrics.render(state.engine.last_stats), media_type=CONTENT_TYPE_LATEST)
