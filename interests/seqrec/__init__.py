"""The item recommender: SASRec, its training, and the top-N restricted to allowed clusters.

Owns `sasrec.py` (the model), `train.py` (training, evaluation, checkpoints), `topn.py` (the
restricted top-N contract of Triton's `seqrec`) and `clustered_topn.py` (what is served: only the
allowed clusters' items are scored).

May import: `interests`, `interests.runtime`, `interests.data`, `interests.clusters`.
"""
