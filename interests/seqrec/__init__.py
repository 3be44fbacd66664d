"""The item recommender: SASRec, its training, and the top-N restricted to allowed clusters.

Owns `sasrec.py` (the model), `train.py` (training, evaluation, checkpoints), `topn.py` (the
restricted top-N contract of Triton's `seqrec`) and `clustered_topn.py` (what is served: only the
allowed clusters' items are scored); `new_items.py` adds items that arrive after training (their text
encoder kept in the checkpoint).

May import: `interests`, `interests.runtime`, `interests.data`, `interests.clusters`.
"""
