"""`evc serve`: the HTTP API and web console over the same library the CLI uses.

Only :mod:`evc.api.app` and the route modules import FastAPI; ``tokens``,
``actions`` and ``feed`` are plain library code (the `evc token` commands use them).
"""
