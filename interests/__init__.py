"""The modelling core: data, interest clusters, the item recommender, the novelty policies, alignment, evaluation.

Grouped by capability, bottom to top (each subpackage's docstring says what it owns):
`runtime` (what Triton's models and the worker's twins run), `data`, `clusters`, `seqrec`,
`novelty`, `alignment`, `evaluation`; `configs.py` (the training settings) sits beside them.

May import: nothing of this project.
"""

__version__ = "0.1.0"
