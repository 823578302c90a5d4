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


def launch(blocks, host: str, port: int, block: bool = True):
    """Serve ``blocks`` on ``host:port``, never through a public share link (whatever
    GRADIO_SHARE or a notebook says) nor as an MCP server; with ``block`` False, return once it
    is up (tests) with its local URL. A port that cannot be bound is a one-line error."""
    try:
        _, url, _ = blocks.launch(server_name=host, server_port=port,
                                  prevent_thread_lock=not block, quiet=True, footer_links=[],
                                  show_error=False, share=False, mcp_server=False)
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port} ({e}); choose another --port or "
                          "--host") from e
    return url
