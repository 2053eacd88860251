#!/usr/bin/env bash
# The main job on the embedded digits dataset: every stage, chained through the ids on stdout.
set -euo pipefail
CLT=${CLT:-clt}
start=$(date +%s)
encoder=$($CLT pretrain recipes/digits_pair.yaml)
probe=$($CLT probe "$encoder")
$CLT evaluate "$probe" --confusion >/dev/null
embeddings=$($CLT embed "$encoder" --split test)
$CLT tsne "$embeddings" >/dev/null
$CLT ls
# the whole run on one page: dataset, recipe, curves, evaluation, t-SNE, neighbours, timings
report=$($CLT --quiet report "$encoder" --out "${REPORT:-report.html}")
echo "demo finished in $(( $(date +%s) - start )) s; the report of this run: $report (open it in a browser)" >&2
