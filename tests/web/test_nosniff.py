"""Every HTTP answer carries ``X-Content-Type-Options: nosniff``: the app's own routes, and
Starlette's 404, 405 and 500 answers, which no route writes (relay.web.headers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from relay.config import Settings
from relay.web.app import create_app


def test_every_http_answer_says_nosniff_once(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())

    async def boom(request: Request) -> Any:
        raise RuntimeError("a bug")

    async def own(request: Request) -> Any:
        return PlainTextResponse("x", headers={"X-Content-Type-Options": "nosniff"})

    app.router.routes.extend([Route("/boom", boom), Route("/own", own)])
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no route needs it

    answers = {
        "404": client.get("/no-such-page"),
        "405": client.get("/twiml"),
        "500": client.get("/boom"),
        "healthz": client.get("/healthz"),
        "own": client.get("/own"),
    }

    assert {name: r.status_code for name, r in answers.items()} == {
        "404": 404, "405": 405, "500": 500, "healthz": 200, "own": 200,
    }  # fmt: skip
    for name, response in answers.items():
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], name
    assert answers["500"].text == "Internal Server Error"
    assert answers["405"].headers["allow"] == "POST"
