"""Psychological errors of supporter replies, shared by the IPM judge (``ipm``) and the
evaluation (``eval``): the error names (:mod:`.names`), the lexicons (:mod:`.lexicon`) and the
offline rules (:mod:`.rules`). Documented in ``docs/judge.md``."""
