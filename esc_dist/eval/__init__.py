"""Evaluation stage: strategy metrics (accuracy, Q, weighted-F1, preference bias B), reply-text
metrics, Markdown/JSON reports with figures, side-by-side comparisons and W&B logging.

Modules (imported on demand, so that ``esc-dist --help`` stays fast):

- :mod:`.predictions` — read and validate the inference stage's predictions JSONL;
- :mod:`.strategy` — accuracy, Q (macro-F1), weighted-F1, per-strategy scores, confusion;
- :mod:`.preference` — Bradley–Terry strategy preferences and the preference bias B;
- :mod:`.text` — BLEU-1..4, ROUGE-L, Distinct-1..3, unigram F1, length;
- :mod:`.llm_scores` — LLM scores of replies (fluency, professionalism, empathy, helpfulness);
- :mod:`.psych_errors` — the rates of the five psychological errors in generated replies;
- :mod:`.report` — ``evaluate``, ``compare``, ``log_report``, ``log_comparison``;
- :mod:`.cli` — the ``eval`` and ``compare`` subcommands (``register``).
"""
