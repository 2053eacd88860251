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
echo "demo finished in $(( $(date +%s) - start )) s; pictures: clt ls shows confusion.png and tsne.png" >&2
