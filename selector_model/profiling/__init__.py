"""Profiling a model on the user's own backend: a versioned suite of prompts with
checkable answers (suite.py, suite_v*.yaml), their graders (graders.py, sandbox.py) and
the store of per-area results the selector reads (store.py)."""
