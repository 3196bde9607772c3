"""The HTTP layer every service shares: one FastAPI factory, one error shape, one way to run a server.

``create_app`` adds what an operator expects of any service — ``/healthz`` (the process is up), ``/readyz``
(the model and features are loaded: 503 until then), ``/metrics`` (Prometheus: request count and latency per
route) — plus a request-size limit (413) and one error body for every failure, validation errors included::

    {"error": {"type": "validation_error", "message": "body.k: Input should be greater than 0", "detail": [...]}}

``ServerProcess`` runs an app factory under uvicorn in a *separate process* on 127.0.0.1 and waits for
``/healthz``: integration tests and benchmarks talk to a real server over real sockets, and the load
generator never shares a GIL with the server it measures.
"""

from __future__ import annotations

import hmac
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from systems.common.proc import free_port, stop_pid

__all__ = [
    "ADMIN_RESPONSES",
    "ERROR_RESPONSES",
    "AdminCredentials",
    "ErrorBody",
    "ServerProcess",
    "check_admin_token",
    "conflict_response",
    "create_app",
    "error_body",
    "free_port",
    "wait_http_ok",
]

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

log = logging.getLogger(__name__)


def error_body(kind: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "detail": detail}}


class ErrorDetail(BaseModel):
    type: str
    """``validation_error``, ``not_found``, ``method_not_allowed``, ``payload_too_large``, ``http_error``, …"""
    message: str
    detail: Any = None


class ErrorBody(BaseModel):
    """The body of every error response of every service (what ``error_body`` builds)."""

    error: ErrorDetail


# Every operation of every service may answer these (the factory's handlers and middleware produce them), so
# they are in every operation's OpenAPI entry with the real body: a client generated from the schema, or a
# fuzzer checking responses against it, sees what the server really sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "The request could not be read: the app's JSON error for a body it cannot parse, or the HTTP "
        "server's own plain-text answer to a request line it cannot parse (control characters, over its size limit)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    413: {"model": ErrorBody, "description": "The body is over the size limit (chunked bodies too)"},
    422: {"model": ErrorBody, "description": "Validation error: the message names the field"},
    500: {"model": ErrorBody, "description": "Internal error (a bug: the request is not retried for you)"},
    503: {"model": ErrorBody, "description": "Not ready, or a dependency is unavailable"},
}

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong admin token (`Authorization: Bearer …`)"},
    403: {"model": ErrorBody, "description": "Admin endpoints are disabled: no admin token is configured"},
}
"""What an admin route adds to its OpenAPI entry (``responses=ADMIN_RESPONSES``)."""


_BEARER = HTTPBearer(auto_error=False, description="the service's admin token")
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
"""An admin route's dependency parameter: the schema shows bearer auth, the route checks it with
:func:`check_admin_token`."""


def check_admin_token(credentials: HTTPAuthorizationCredentials | None, token: str | None, *, env_var: str) -> None:
    """401 on a missing or wrong token (compared in constant time), 403 when the service has none configured."""
    if token is None:
        raise StarletteHTTPException(403, f"admin endpoints are disabled: set {env_var}")
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise StarletteHTTPException(401, "missing or wrong admin token (Authorization: Bearer …)")


def conflict_response(description: str) -> dict[int | str, dict[str, Any]]:
    """A documented 409 for a route that refuses in some states (``responses=conflict_response("…")``)."""
    return {409: {"model": ErrorBody, "description": description}}


_ERROR_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(
    *,
    title: str,
    version: str = "0.1.0",
    lifespan: Lifespan | None = None,
    ready: Callable[[], bool] | None = None,
    max_body_bytes: int = 1_000_000,
) -> FastAPI:
    """A FastAPI app with health, readiness, metrics, a body-size limit and a uniform error body."""
    app = FastAPI(title=title, version=version, lifespan=lifespan, responses=ERROR_RESPONSES)
    # A registry per app (not the global one) so tests can build many apps in one process.
    registry = CollectorRegistry()
    requests = Counter("http_requests", "HTTP requests", ["route", "method", "status"], registry=registry)
    latency = Histogram(
        "http_request_seconds",
        "HTTP request latency",
        ["route", "method"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    )
    app.state.metrics_registry = registry

    # Pure ASGI middleware, not @app.middleware("http"): the latter wraps every request in extra tasks and
    # streams and costs ~40 % of the no-op ceiling (measured with `mlsd bench selftest`).
    app.add_middleware(_Instrument, max_body_bytes=max_body_bytes, latency=latency, requests=requests)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        body = error_body("validation_error", _validation_message(exc), detail)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _ERROR_KINDS.get(exc.status_code, "http_error")
        # the exception's headers go out with it: ``Allow`` on a 405, ``WWW-Authenticate`` on a 401
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unhandled(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: the same JSON shape as every other error (never a plain-text 500), and
        # the traceback in the server's log (Starlette re-raises after this response is sent).
        log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse(error_body("internal_error", "internal error (logged by the server)"), status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ok = ready() if ready is not None else True
        if ok:
            return JSONResponse({"status": "ready"})
        return JSONResponse(error_body("not_ready", "service is starting"), status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Instrument:
    """Reject oversized bodies (413: by Content-Length, or while a chunked one streams in) and record per-route
    request count and latency."""

    def __init__(self, app: Any, *, max_body_bytes: int, latency: Histogram, requests: Counter) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.latency = latency
        self.requests = requests

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                response = JSONResponse(
                    error_body("payload_too_large", f"request body over {self.max_body_bytes} bytes"), status_code=413
                )
                await response(scope, receive, send)
                return
        start = time.perf_counter()
        status = 500
        limit, received = self.max_body_bytes, 0

        async def receive_within_limit() -> dict[str, Any]:
            # A chunked body has no Content-Length to check up front: count what arrives and stop reading at the
            # limit, so a 60 MB body costs 1 MB of memory, not 60 (the handler turns this into a JSON 413).
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, f"request body over {limit} bytes")
            return message

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_and_note)
        finally:
            # The router stores the matched route in the scope; label by its template, not the raw path,
            # so /users/1 and /users/2 share one time series.
            path = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(path, scope["method"]).observe(time.perf_counter() - start)
            self.requests.labels(path, scope["method"], str(status)).inc()


# ------------------------------------------------------------------------------------- running a server


def wait_http_ok(url: str, timeout_s: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} not OK within {timeout_s:.0f} s (last: {last})")


class ServerProcess:
    """``uvicorn --factory APP`` in a subprocess on 127.0.0.1; a context manager that waits for ``/readyz``."""

    def __init__(
        self,
        app_factory: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        log_path: Path | None = None,
        ready_path: str = "/readyz",
        timeout_s: float = 120.0,
    ) -> None:
        self.app_factory = app_factory
        self.port = port or free_port()
        self.env = env or {}
        self.workers = workers
        self.log_path = log_path
        self.ready_path = ready_path
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", self.app_factory, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning"]
        cmd += ["--no-access-log"]
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        if out is not subprocess.DEVNULL:
            out.close()
        try:
            wait_http_ok(self.url + self.ready_path, self.timeout_s, self.process)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, timeout_s=10)
            self.process.wait(timeout=5)
            self.process = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
