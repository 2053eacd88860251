"""Encoders and heads. Importing this package registers every encoder."""

from clt.models import encoders  # noqa: F401  (registers)
from clt.models.heads import build_encoder, mlp

__all__ = ["build_encoder", "mlp"]
