"""clt's version: part of every artifact's address, so it lives apart from everything that imports it."""

__version__ = "0.1.0"
