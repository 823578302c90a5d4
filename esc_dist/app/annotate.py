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
    n_out = 5 + len(CRITERIA)  # item view: progress, context, A, B, item box; the radios

    def cleared():
        # a fresh Radio, not an update to None (which the page may keep showing ticked)
        return [gr.Radio(CHOICE_LABELS, value=None) for _ in CRITERIA]

    def show(annotator: str | None, note: str = ""):
        """The outputs that show the annotator's next item (or that they are done)."""
        item = study.next_item(annotator) if annotator else None
        if item is None:
            done, total = study.progress(annotator) if annotator else (0, 0)
            return [f"**All {total} items judged. Thank you!** {note}".strip(), "", "", "",
                    gr.update(visible=False)] + cleared()
        progress = f"Item {item['position']} of {item['total']}. {note}".strip()
        return [progress, context_html(item["context"]), item["A"], item["B"],
                gr.update(visible=True)] + cleared()

    with gr.Blocks(title="esc-dist human evaluation", analytics_enabled=False) as page:
        session = gr.State({"annotator": None, "item_id": None})
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
                    reply_a = gr.Textbox(label="Reply A", interactive=False, lines=4,
                                         elem_id="reply-a")
                    reply_b = gr.Textbox(label="Reply B", interactive=False, lines=4,
                                         elem_id="reply-b")
                radios = [gr.Radio(CHOICE_LABELS, label=f"{c.capitalize()}: "
                                   f"{CRITERION_HELP[c]}", elem_id=f"crit-{c}")
                          for c in CRITERIA]
                submit = gr.Button("Submit and go on", variant="primary", elem_id="submit")
            status = gr.Markdown("", elem_id="status")
        item_outputs = [progress, context, reply_a, reply_b, item_box, *radios]
        assert len(item_outputs) == n_out

        def on_signin(tok):
            annotator = study.authenticate((tok or "").strip())
            if annotator is None:
                return [{"annotator": None, "item_id": None}, "Unknown token.",
                        gr.update(visible=True), gr.update(visible=False), ""] + \
                       [gr.update()] * n_out
            item = study.next_item(annotator)
            state = {"annotator": annotator, "item_id": item and item["item_id"]}
            return [state, "", gr.update(visible=False), gr.update(visible=True),
                    f"Signed in as **{html.escape(annotator)}**."] + show(annotator)

        def on_submit(state, *choices):
            annotator, item_id = state.get("annotator"), state.get("item_id")
            if not annotator or not item_id:
                return [state, "Sign in first."] + [gr.update()] * n_out
            picked = dict(zip(CRITERIA, choices))
            missing = [c for c, v in picked.items() if not v]
            if missing:
                return [state, f"Please judge {', '.join(missing)}."] + [gr.update()] * n_out
            try:
                study.submit(annotator, item_id, picked)
                note = "Saved."
            except AlreadyJudged:
                note = "That item was already saved."
            except JudgmentError as e:
                return [state, html.escape(str(e))] + [gr.update()] * n_out
            item = study.next_item(annotator)
            state = {"annotator": annotator, "item_id": item and item["item_id"]}
            return [state, note] + show(annotator)

        private = {"api_visibility": "private"}
        signin.click(on_signin, [token], [session, login_msg, login, work, status,
                                          *item_outputs], **private)
        token.submit(on_signin, [token], [session, login_msg, login, work, status,
                                          *item_outputs], **private)
        submit.click(on_submit, [session, *radios], [session, status, *item_outputs],
                     **private)
    return page


def serve_study(study, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the annotation page of ``study``; with ``block`` False return (page, url) once it
    is up."""
    page = build_page(study)
    return page, launch(page, host, port, block)
