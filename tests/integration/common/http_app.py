"""A tiny app on the shared factory, served by uvicorn in the HTTP tests."""

from fastapi import FastAPI
from pydantic import BaseModel, Field

from systems.common.http import create_app


class Echo(BaseModel):
    text: str
    k: int = Field(gt=0)


def create_test_app() -> FastAPI:
    app = create_app(title="test", max_body_bytes=4_096)

    @app.post("/echo")
    async def echo(body: Echo) -> Echo:
        return body

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise ZeroDivisionError("a bug in a handler")

    return app
