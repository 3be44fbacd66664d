"""The modelling core: datasets, interest clusters, the sequence recommender, the novelty LM.

Depends on no other package of this project (see docs/DESIGN.md).
"""

__version__ = "0.1.0"
