"""The engine's core: a micro-batch of interactions in, slates, feedback and rows out; no Faust, no Kafka.

Owns `engine.py`, `state.py` (per-user state), `records.py` (input validation), `recommendation.py`
(the slate record), `feedback.py` (when a proposal resolves), `table.py` (the novelty table's rows
and keys), `model_files.py` (the exported models served), `metrics.py` (the engine's counters) and
`offline_feedback.py` (the same proposals replayed offline), and a living catalog's: `items.py`
(the items topic's records), `migration.py` (a state moved to another catalog) and `model_sets.py`
(which model set every worker serves). A test imports all of it and finds
neither Faust nor a Kafka client loaded.

May import: `interests.*`, `streams`, `streams.inference`.
"""
