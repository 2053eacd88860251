#!/usr/bin/env bash
# One recipe under several sets of overrides, run side by side: each through `clt pretrain`,
# `clt probe` and `clt evaluate --knn K`, one result line per run as it finishes.
#
#   bash bench/sweep.sh RECIPE TRIALS_FILE [PARALLEL] [DEVICE] [KNN_K]
#   bash bench/sweep.sh recipes/cifar10_triplet.yaml bench/cifar10_triplet_trials.txt 7 cuda
#
# TRIALS_FILE: one run per line, "label --set key=value ...", '#' lines skipped.
# Prints "label pretrain_s total_s probe_accuracy knn_accuracy pair_accuracy pair_accuracy_random_partner"
# (the last two for objectives with pair verification, else None). Runs share the machine, so
# their seconds compare runs of one sweep, not machines. Artifacts go to $CLT_ARTIFACTS
# (default ./artifacts); a run already in the store is reused.
set -euo pipefail
recipe=$1 trials=$2 parallel=${3:-1} device=${4:-auto} k=${5:-200}
clt=${CLT:-clt}
command -v "$clt" >/dev/null || clt="python3 -m clt"
export recipe device k clt

one() {
  label=$1; shift
  start=$(date +%s)
  encoder=$($clt -q pretrain "$recipe" --device "$device" --set pretrain.snapshot_every=0 "$@") \
    || { echo "$label failed in pretrain"; return 0; }
  trained=$(date +%s)
  # each stage is checked: the function runs in its own bash, without the script's errexit, and an
  # empty probe id would make evaluate score the store's latest probe instead
  probe=$($clt -q probe "$encoder" --device "$device") || { echo "$label failed in probe"; return 0; }
  result=$($clt -q evaluate "$probe" --device "$device" --knn "$k" --json) \
    || { echo "$label failed in evaluate"; return 0; }
  echo "$result" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(sys.argv[1], sys.argv[2], sys.argv[3], r["accuracy"], r.get("knn_accuracy"), r.get("pair_accuracy"),
      r.get("pair_accuracy_random_partner"))
' "$label" $((trained - start)) $(($(date +%s) - start))
}
export -f one
grep -v '^\s*\(#\|$\)' "$trials" | xargs -P "$parallel" -L 1 bash -c 'one "$@"' _
