#!/usr/bin/env bash
# The measured answer of docs/findings.md: Table 1 (the four models x five of the paper's seeds)
# on data=synth_cxr and data=synth_cxr_clean, in a reduced setting that fits about an hour on
# 2 idle CPU cores: 1,500 images at 64 px, 6 epochs, ensembles of 5 members, small_cnn.
# Both checkpoint rules are measured on every run (explain.also_test=last).
#   scripts/findings_sweep.sh [base|expl|report|all]   (RUNS=... for the folder, SEEDS=... the seeds)
set -euo pipefail
RUNS=${RUNS:-runs/findings}
SEEDS=${SEEDS:-1735,2948,4235,4582,4678}  # SEEDS=... for others (the paper has ten)
COMMON=(data.synth.params.n=1500 data.image_size=64 trainer.max_epochs=6 explain.also_test=last
        callbacks.progress_bar=null "paths.runs_dir=$RUNS")
part=${1:-all}
for data in synth_cxr synth_cxr_clean; do
  if [[ $part == base || $part == all ]]; then
    mimic-run -m sweep=table1 "data=$data" model=baseline,improved_unet "seed=$SEEDS" "${COMMON[@]}"
    mimic-run -m sweep=table1 "data=$data" model=normal_ensemble model.ensemble_size=5 \
      "seed=$SEEDS" "${COMMON[@]}"
  fi
  if [[ $part == expl || $part == all ]]; then
    mimic-run -m sweep=table1 "data=$data" model=expl_ensemble model.ensemble_size=5 \
      "seed=$SEEDS" "${COMMON[@]}"
  fi
done
if [[ $part == report || $part == all ]]; then
  mimic-report "$RUNS/table1" --out "$RUNS/report" --compare-paper
fi
