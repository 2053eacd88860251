"""One module per command: recipe + store + device -> artifact.

Only the stages turn recipe sections into constructor arguments and touch the store. Heavy
libraries (torch, sklearn, matplotlib) are imported inside the stages so that the CLI starts
fast and a cache hit returns before torch is loaded. Nothing here prints: stages report through
`Context.report`, and `clt.api` is the public face of these functions.
"""

from clt.stages.baselines import baseline_logreg, baseline_scratch
from clt.stages.compare import iter_rows, summarize
from clt.stages.context import Context, Outcome, ProgressEvent, ProgressTask, Reporter, produce
from clt.stages.dataset import KNOWN_DATASETS, dataset_artifact, download, load_dataset
from clt.stages.embed import embed, stored_features, tsne
from clt.stages.evaluate import EVALUATE_PROTOCOL, encoder_of, evaluate, verifiable
from clt.stages.export import export
from clt.stages.images import embed_images
from clt.stages.predict import predict
from clt.stages.pretrain import pretrain, snapshots
from clt.stages.probe import load_probe, probe
from clt.stages.report import report
from clt.stages.search import SearchIndex, build_index, search
from clt.stages.views import views
from clt.stages.weights import load_encoder, load_weights, save_module

__all__ = ["EVALUATE_PROTOCOL", "KNOWN_DATASETS", "Context", "SearchIndex", "build_index", "embed_images", "export",
           "predict", "search", "Outcome", "ProgressEvent", "ProgressTask", "Reporter",
           "baseline_logreg", "baseline_scratch", "dataset_artifact", "download", "embed", "encoder_of", "evaluate",
           "iter_rows", "load_dataset", "load_encoder", "load_probe", "load_weights", "pretrain", "probe", "produce",
           "report", "save_module", "snapshots", "stored_features", "summarize", "tsne", "verifiable", "views"]
