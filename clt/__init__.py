"""clt: contrastive learning toolkit for images."""

__version__ = "0.1.0"
