"""The novelty precompute as a distributed job: requests in, table rows out, one transaction per batch.

Owns `jobs.py` (the pure parts and the Kafka reads around them) and `worker.py` (a precompute worker).

May import: `interests.*`, `streams`, `streams.core`, `streams.inference`, `streams.infra`, `streams.wiring`.
"""
