"""Interaction data: the in-memory dataset, its loaders, synthetic data with planted structure, the splits.

Owns `datasets.py` (one form for every source), `loaders.py` (MovieLens and the generic format),
`synthetic.py` and `splits.py` (leave-one-out by time, training periods, ranking metrics).

May import: `interests`.
"""
