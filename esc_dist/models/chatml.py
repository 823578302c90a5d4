"""The ChatML chat template our models use, with ``{% generation %}`` markers around each
assistant reply (what TRL's ``assistant_only_loss`` and ``return_assistant_tokens_mask`` need).

``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per message; ``<|im_start|>assistant\\n`` opens the
reply to generate. Some instruct models (SmolLM2) add a system message of their own when a
conversation has none: ``default_system`` renders it the same way.
"""

from __future__ import annotations

import json

_OPEN = "<|im_start|>"
_CLOSE = "<|im_end|>"


def chatml_template(default_system: str | None = None) -> str:
    head = ""
    if default_system is not None:
        literal = json.dumps(f"{_OPEN}system\n{default_system}{_CLOSE}\n")
        head = "{% if loop.first and message['role'] != 'system' %}{{ " + literal + " }}{% endif %}"
    return (
        "{% for message in messages %}" + head + "{{ '" + _OPEN + "' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '" + _CLOSE + "' }}{% endgeneration %}"
        "{{ '\n' }}"
        "{% else %}"
        "{{ message['content'] + '" + _CLOSE + "' + '\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + _OPEN + "assistant\n' }}{% endif %}"
    )


# Conversations on which a template we build must render exactly like the one it replaces.
PROBES: list[list[dict]] = [
    [{"role": "user", "content": "I lost my job."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c\nd"},
    ],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
]
