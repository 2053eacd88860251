"""Objectives: small pure functions over a batch of embeddings (and labels), registered by name.

Importing this package registers every objective. Pair and triplet selection lives in
`mining` and returns index tensors; the losses only say how much those pairs cost.
"""

# numpy first: torch imports it from C++ and swallows any error there, a Ctrl-C included
import numpy  # noqa: F401, I001

from clt.objectives import (  # noqa: F401  (registers)
    barlow_twins, byol, cosine_pair, moco, nnclr, ntxent, pair, simsiam, supcon, triplet, vicreg)
