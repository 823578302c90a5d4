"""``esc-dist human-eval serve``: the annotation page of a blinded pairwise study.

An annotator signs in with their token and gets the study's items in their own seeded order,
resuming at the first one they have not judged: the dialogue context, the two replies as "A"
and "B" (never a system name: the page reads only the public items, through
:class:`esc_dist.humaneval.study.Study`, which never opens key.json), and the five criteria,
each "A is better" / "tie" / "B is better". Submitting stores the item's five judgments in one
transaction and shows the next item.

Who is signed in lives in the server-side session state, never in the page: every handler
checks it, so an unsigned visitor gets no item. All text is shown as text (the context is
escaped, the replies are read-only text boxes).
"""

from __future__ import annotations

import html

from ..errors import AlreadyJudged, JudgmentError
from ..humaneval import CRITERIA
from . import launch, require_gradio

CHOICE_LABELS = [("A is better", "A"), ("Tie", "tie"), ("B is better", "B")]
CRITERION_HELP = {
    "fluency": "Which reply reads more naturally and correctly?",
    "professionalism": "Which reply is more appropriate for a counsellor?",
    "empathy": "Which reply better understands and acknowledges the seeker's feelings?",
    "helpfulness": "Which reply helps the seeker more?",
    "overall": "Overall, which reply is better?",
}


def context_html(context: list[dict]) -> str:
    """The dialogue before the replies, escaped, one line per message."""
    rows = []
    for m in context:
        who = "Seeker" if m["role"] == "seeker" else "Supporter"
        rows.append(f'<p class="turn {m["role"]}"><b>{who}:</b> {html.escape(m["text"])}</p>')
    return "\n".join(rows) or "<p><i>(the conversation starts here)</i></p>"


def build_page(study):
    gr = require_gradio()
    signed_out = {"annotator": None, "token": None, "item_id": None}

    def cleared():
        # a fresh Radio, not an update to None (which the page may keep showing ticked)
        return [gr.Radio(CHOICE_LABELS, value=None) for _ in CRITERIA]

    def view(annotator: str, note: str = "") -> tuple[str | None, list]:
        """The annotator's next item (looked up once: the item shown is the item judged) and
        the outputs that show it, or that they are done."""
        item = study.next_item(annotator)
        if item is None:
            total = study.progress(annotator)[1]
            return None, [
                f"**All {total} items judged. Thank you!** {note}".strip(),
                "",
                "",
                "",
                gr.update(visible=False),
            ] + cleared()
        progress = f"Item {item['position']} of {item['total']}. {note}".strip()
        return item["item_id"], [
            progress,
            context_html(item["context"]),
            item["A"],
            item["B"],
            gr.update(visible=True),
        ] + cleared()

    with gr.Blocks(title="esc-dist human evaluation", analytics_enabled=False) as page:
        # server-side per session: who signed in (and with which token), which item is shown
        session = gr.State(dict(signed_out))
        gr.Markdown("## Which supporter reply is better?")
        with gr.Group(visible=True) as login:
            token = gr.Textbox(label="Access token", type="password", elem_id="token")
            signin = gr.Button("Sign in", variant="primary", elem_id="signin")
            login_msg = gr.Markdown("", elem_id="login-msg")
        with gr.Group(visible=False) as work:
            progress = gr.Markdown("", elem_id="progress")
            with gr.Column(visible=True) as item_box:
                gr.Markdown("**The conversation so far**")
                context = gr.HTML("", elem_id="context")
                with gr.Row():
                    reply_a = gr.Textbox(
                        label="Reply A", interactive=False, lines=4, elem_id="reply-a"
                    )
                    reply_b = gr.Textbox(
                        label="Reply B", interactive=False, lines=4, elem_id="reply-b"
                    )
                radios = [
                    gr.Radio(
                        CHOICE_LABELS,
                        label=f"{c.capitalize()}: {CRITERION_HELP[c]}",
                        elem_id=f"crit-{c}",
                    )
                    for c in CRITERIA
                ]
                submit = gr.Button("Submit and go on", variant="primary", elem_id="submit")
            status = gr.Markdown("", elem_id="status")
        item_outputs = [progress, context, reply_a, reply_b, item_box, *radios]
        unchanged = [gr.update()] * len(item_outputs)
        outputs = [session, login_msg, login, work, status, *item_outputs]

        def to_login(message: str) -> list:
            return [
                dict(signed_out),
                message,
                gr.update(visible=True),
                gr.update(visible=False),
                "",
            ] + unchanged

        def on_signin(tok):
            tok = (tok or "").strip()
            annotator = study.authenticate(tok)
            if annotator is None:
                return to_login("Unknown token.")
            item_id, shown = view(annotator)
            state = {"annotator": annotator, "token": tok, "item_id": item_id}
            return [
                state,
                "",
                gr.update(visible=False),
                gr.update(visible=True),
                f"Signed in as **{html.escape(annotator)}**.",
            ] + shown

        def on_submit(state, *choices):
            annotator, item_id = state.get("annotator"), state.get("item_id")
            # signed in in this session, with a token that still works (not rotated since)
            if not annotator or study.authenticate(state.get("token") or "") != annotator:
                return to_login("Please sign in (again).")
            if not item_id:
                return [
                    state,
                    gr.update(),
                    gr.update(),
                    gr.update(),
                    "Nothing left to judge.",
                ] + unchanged
            picked = dict(zip(CRITERIA, choices))
            missing = [c for c, v in picked.items() if not v]
            if missing:
                return [
                    state,
                    gr.update(),
                    gr.update(),
                    gr.update(),
                    f"Please judge {', '.join(missing)}.",
                ] + unchanged
            try:
                study.submit(annotator, item_id, picked)
                note = "Saved."
            except AlreadyJudged:
                note = "That item was already saved."
            except JudgmentError as e:
                return [
                    state,
                    gr.update(),
                    gr.update(),
                    gr.update(),
                    html.escape(str(e)),
                ] + unchanged
            item_id, shown = view(annotator)
            return [
                {**state, "item_id": item_id},
                gr.update(),
                gr.update(),
                gr.update(),
                note,
            ] + shown

        # Not offered as a public API (and kept out of Gradio's run history, which would record
        # the token); any call is checked against the session state above all the same. No
        # concurrency limit: SQLite takes concurrent submissions (one transaction per item).
        events = {"api_visibility": "private", "concurrency_limit": None}
        signin.click(on_signin, [token], outputs, **events)
        token.submit(on_signin, [token], outputs, **events)
        submit.click(on_submit, [session, *radios], outputs, **events)
    page.queue(max_size=256)
    return page


def serve_study(study, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the annotation page of ``study``; with ``block`` False return (page, url) once it
    is up."""
    page = build_page(study)
    return page, launch(page, host, port, block)
