"""clt: contrastive learning toolkit for images.

The library's verbs are those of the command line, loaded on first use so that `clt --help`
and `import clt` stay free of torch:

    import clt
    encoder = clt.load_encoder("latest-encoder")
    vectors = encoder.embed(images)  # (N, D) numpy array

See `clt.api` for every function.
"""

from clt.version import __version__

_API = ("Classifier", "CltError", "DivergenceError", "Encoder", "ProgressEvent", "Result", "baseline_logreg",
        "baseline_scratch", "WriteError",
        "adopt_key", "compare", "download", "embed", "embedding_geometry", "evaluate", "export", "gc", "index", "init",
        "key_status", "list_artifacts", "load_index",
        "predict", "search", "load_classifier", "load_dataset",
        "load_encoder", "open_store", "pretrain", "probe", "report", "show", "tsne", "verify", "views")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from clt import api

        return getattr(api, name)
    raise AttributeError(f"module 'clt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
