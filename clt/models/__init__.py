"""Encoders and heads. Importing this package registers every encoder."""

# numpy first: torch imports it from C++ and swallows any error there, a Ctrl-C included
import numpy  # noqa: F401, I001

from clt.models import encoders  # noqa: F401  (registers)
from clt.models.heads import build_encoder, mlp

__all__ = ["build_encoder", "mlp"]
