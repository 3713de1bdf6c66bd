#!/usr/bin/env bash
# The measured answer of docs/findings.md, in a reduced setting that fits on 2 CPU cores:
# 1,500 images at 64 px, 6 epochs, ensembles of 5 members, small_cnn, the paper's ten seeds, and
# a dataset per seed (data.synth.params.seed=${seed}: ten synthetic datasets per variant, so the
# confidence intervals hold data noise as well as training noise). Two jobs of one thread each.
#   scripts/findings_sweep.sh [table1|authors|table2|report|all]
#   RUNS=... for the folder, SEEDS=... for other seeds, T2_SEEDS=... for Table 2's seeds.
set -euo pipefail
RUNS=${RUNS:-runs/findings}
SEEDS=${SEEDS:-1735,2948,4235,4582,4678,5682,7624,7626,9374,9576}
T2_SEEDS=${T2_SEEDS:-1735,2948,4235}
COMMON=(data.synth.params.n=1500 data.image_size=64 trainer.max_epochs=6
        'data.synth.params.seed=${seed}' callbacks.progress_bar=null "paths.runs_dir=$RUNS"
        launcher=local)
ENSEMBLES=normal_ensemble,expl_ensemble,gaze_guided_ensemble,expl_gaze_ensemble
part=${1:-all}
for data in synth_cxr_clean synth_cxr; do
  if [[ $part == table1 || $part == all ]]; then
    mimic-run -m sweep=table1 "data=$data" model=baseline "seed=$SEEDS" "${COMMON[@]}"
    mimic-run -m sweep=table1 "data=$data" "model=$ENSEMBLES" model.ensemble_size=5 \
      "seed=$SEEDS" "${COMMON[@]}"
  fi
  if [[ $part == authors || $part == all ]]; then
    mimic-run -m sweep=table1 "data=$data" model=expl_ensemble_authors model.ensemble_size=5 \
      "seed=$SEEDS" "${COMMON[@]}"
  fi
done
if [[ $part == table2 || $part == all ]]; then
  # Table 2's question at the reduced scale: does the ensemble size matter (2, 5, 10)?
  mimic-run -m sweep=table2 data=synth_cxr_clean \
    model=normal_ensemble,expl_ensemble,gaze_guided_ensemble model.ensemble_size=2,5,10 \
    "seed=$T2_SEEDS" "${COMMON[@]}"
fi
if [[ $part == report || $part == all ]]; then
  mimic-report "$RUNS/table1" --out "$RUNS/report" --compare-paper
  python scripts/findings_tables.py "$RUNS" > "$RUNS/findings_tables.md"
fi
