"""The Faust and Kafka wiring around the core: the worker, its app, delivery, topics read and written.

Owns `worker.py` (topics, tables, the agent, pages -> `streams.core.engine`), `app.py` and
`faust_app.py` (the Faust application), `delivery.py` (offsets: order, acks, resume, stall, lag),
`topic_reader.py` (a topic read to its end), `table_topic.py` (the novelty table's topic),
`items_topic.py` (publishing items, events waiting for theirs), `model_sets.py` (publishing, rolling
back and pruning model sets, and a worker switching between them), `replay.py` (the load generator)
and `passthrough.py` (the benchmark's pass-through worker).

May import: `interests.*`, `streams`, `streams.core`, `streams.web`, `streams.inference`, `streams.infra`.
"""
