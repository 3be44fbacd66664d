"""The worker's web side: the live page and the routing of `GET /users/{id}` to the worker holding the user.

May import: `streams`, `streams.core`.
"""
