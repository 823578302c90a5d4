"""``esc-dist demo``: talk to a decoupled system and a vanilla one side by side in a web page.

The seeker's message goes to every system; each keeps its own history (its own past replies),
and every supporter turn shows the strategy that was planned: ``[Strategy] reply``, or, when
the planner's output names no strategy, what it said and the strategy the generator fell back
to. One reply at a time is generated (the models are shared by every visitor of the page).
"""

from __future__ import annotations

import html
import uuid

from ..chat import MAX_MESSAGE_CHARS, ChatSystem, respond_all
from ..errors import EscError
from . import launch, require_gradio

MAX_BODY = 1024 * 1024
TITLES = {"decoupled": "Decoupled (planner -> generator)", "vanilla": "Vanilla (joint model)"}


def new_session(systems) -> dict:
    return {"id": uuid.uuid4().hex, "histories": {name: [] for name in systems}}


def build_demo(systems: dict[str, ChatSystem]):
    gr = require_gradio()
    names = list(systems)
    with gr.Blocks(title="esc-dist demo", analytics_enabled=False) as page:
        gr.Markdown(
            "## Emotional-support demo\nWrite as the help-seeker. Each system answers "
            "in its own column; the strategy it planned comes first, in brackets."
        )
        state = gr.State(None)
        with gr.Row():
            bots = [
                gr.Chatbot(
                    label=TITLES.get(n, n),
                    elem_id=f"chat-{n}",
                    height=420,
                    render_markdown=False,
                    sanitize_html=True,
                )
                for n in names
            ]
        box = gr.Textbox(
            label=f"Your message (as the help-seeker, at most {MAX_MESSAGE_CHARS} characters)",
            elem_id="message",
            lines=2,
        )
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            reset = gr.Button("New conversation", elem_id="reset")

        def on_send(text, session, *chats):
            session = session or new_session(systems)
            chats = [list(c or []) for c in chats]
            text = (text or "").strip()
            if not text:
                return ("", session, *chats)
            try:  # every system answers before any history moves on
                replies = respond_all(systems, session["histories"], text, session["id"])
            except EscError as e:
                # this message only: the visitor is told, keeps their text to shorten, and the
                # conversation goes on
                gr.Warning(str(e).replace(" (not sent; the conversation goes on)", ""))
                return (text, session, *chats)
            for i, name in enumerate(names):
                # the chat box renders HTML: escaped, every text shows as written
                chats[i] += [
                    {"role": "user", "content": html.escape(text)},
                    {"role": "assistant", "content": html.escape(replies[name].label())},
                ]
            return ("", session, *chats)

        def on_reset():
            return (new_session(systems), *([[]] * len(names)))

        for trigger in (send.click, box.submit):
            trigger(
                on_send,
                [box, state, *bots],
                [box, state, *bots],
                concurrency_limit=1,
                api_visibility="private",
            )
        reset.click(on_reset, None, [state, *bots], api_visibility="private")
    return page


def serve_demo(
    systems: dict[str, ChatSystem], host: str = "127.0.0.1", port: int = 7860, block: bool = True
):
    """Serve the demo; with ``block`` False return (page, url) once it is up."""
    page = build_demo(systems)
    # the page sends the conversations shown with every message: room for long ones
    url = launch(page, host, port, block, max_body=MAX_BODY)
    return page, url
