"""Objectives: small pure functions over a batch of embeddings (and labels), registered by name.

Importing this package registers every objective. Pair and triplet selection lives in
`mining` and returns index tensors; the losses only say how much those pairs cost.
"""

from clt.objectives import cosine_pair, ntxent, pair, supcon, triplet  # noqa: F401  (registers)
