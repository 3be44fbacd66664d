"""Evaluation: the judge of novelty policies, its statistics, and the replay evaluation of the engine.

Owns `judge.py` (every policy at every level on three target sets), `stats.py` (bootstrap by user,
exact McNemar), `proposals.py` (coverage, entropy, divergence, context buckets) and `replay.py` (the
engine's records against what users did next). It never tunes anything: policies come in fitted.

May import: `interests`, `interests.data`, `interests.clusters`, `interests.seqrec`, `interests.novelty`.
"""
