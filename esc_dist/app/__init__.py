"""The web pages (Gradio): the demo (``demo.py``: talk to trained systems) and the human
evaluation's annotation page (``annotate.py``). Gradio comes with ``pip install 'esc-dist[app]'``.

Every page binds 127.0.0.1 unless told otherwise, sends nothing to Gradio's analytics, hides
the "use via API" footer, and shows model text as text (never as HTML).
"""

from __future__ import annotations

import os

from ..errors import ConfigError


def require_gradio():
    """Gradio, with its analytics off; a one-line error when the extra is not installed."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as e:
        raise ConfigError("the web pages need Gradio: pip install 'esc-dist[app]'") from e
    return gradio


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def launch(blocks, host: str, port: int, block: bool = True, *, max_body: int = 64 * 1024):
    """Serve ``blocks`` on ``host:port``, never through a public share link (whatever
    GRADIO_SHARE or a notebook says) nor as an MCP server, with only the routes the page uses
    and request bodies of at most ``max_body`` bytes (:mod:`.guard`); with ``block`` False,
    return once it is up (tests) with its local URL. A port that cannot be bound is a one-line
    error."""
    from .guard import MAX_FILE_SIZE, middleware

    try:
        _, url, _ = blocks.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=not block,
            quiet=True,
            footer_links=[],
            show_error=False,
            share=False,
            mcp_server=False,
            max_file_size=MAX_FILE_SIZE,
            enable_monitoring=False,
            pwa=False,
            ssr_mode=False,
            run_history=False,
            app_kwargs={
                "middleware": middleware(max_body),
                "docs_url": None,
                "redoc_url": None,
                "openapi_url": None,
            },
        )
    except OSError as e:
        raise ConfigError(
            f"cannot serve on {host}:{port} ({e}); choose another --port or --host"
        ) from e
    return url
