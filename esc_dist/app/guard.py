"""What a web page of ours lets through: only the routes the page uses, and bodies of a bounded
size. An ASGI middleware, given to the FastAPI app that Gradio builds (``launch(app_kwargs=
{"middleware": ...})``), so it runs before any of Gradio's routes.

Gradio's app carries many routes a page of ours never calls: file upload and file serving, the
proxy, streaming, the REST and "call" APIs, run history, monitoring, the API description,
login, its development and "vibe" editors. Each is either unused by our pages or a way around
the page (an upload route takes a file of any size from anyone and serves it back). The guard
answers 404 to every route that is not in the page's list (:data:`PAGE_ROUTES`) and 413 to a
body over the limit, whether it says its length (``Content-Length``) or not (chunked: counted
as it arrives). Gradio's own ``max_file_size`` is set too (uploads are closed here anyway).
"""

from __future__ import annotations

import re

# What the page itself loads and calls (found by loading it in a browser and using it): the
# page, its config and assets, and the queue its events go through. None of these carries study
# text before a sign-in: the handlers behind the queue check the session's sign-in.
PAGE_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", r"/"),
    ("GET", r"/config/?"),
    ("GET", r"/(assets|static|svelte)/[^?#]+"),
    ("GET", r"/(favicon\.ico|theme\.css|robots\.txt|manifest\.json)"),
    ("GET", r"/gradio_api/(theme\.css|startup-events|app_id/?)"),
    ("GET", r"/gradio_api/heartbeat/[A-Za-z0-9_\-]{1,64}"),
    ("GET", r"/gradio_api/queue/data"),
    ("POST", r"/gradio_api/queue/join"),
)
# Gradio's default is "no limit"; the pages take no files.
MAX_FILE_SIZE = "1kb"


def _allowed(method: str, path: str, routes) -> bool:
    method = "GET" if method == "HEAD" else method
    return any(method == m and re.fullmatch(p, path) for m, p in routes)


async def _answer(send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: ``routes`` (method, path regex) pass, everything else is 404; a
    request body over ``max_body`` bytes is 413."""

    def __init__(self, app, routes=PAGE_ROUTES, max_body: int = 64 * 1024):
        self.app, self.routes, self.max_body = app, routes, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] not in ("http", "websocket"):
            return None
        root = scope.get("root_path") or ""
        path = scope.get("path") or "/"
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        if scope["type"] == "websocket" or not _allowed(method, path, self.routes):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _answer(send, 404, "Not Found")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_body
            except ValueError:
                return await _answer(send, 400, "Bad Content-Length")
            if too_large:
                return await _answer(send, 413, "Request body too large")
        if scope["type"] == "http" and method in ("POST", "PUT", "PATCH"):
            # read the body here (at most max_body bytes, whatever the headers said), then hand
            # it on: a chunked body over the limit never reaches Gradio
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # the client left
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await _answer(send, 413, "Request body too large")
                if not message.get("more_body"):
                    break
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


def middleware(max_body: int, routes=PAGE_ROUTES) -> list:
    """The ``middleware`` argument of the FastAPI app (Gradio's ``app_kwargs``)."""
    from starlette.middleware import Middleware

    return [Middleware(Guard, routes=routes, max_body=max_body)]
