"""Work on finished runs: reload a run or a checkpoint, global explanations, PEPPR.

Split by job: :mod:`.load` (a run's config, data and trained model), :mod:`.maps` (a split's
per-image explanations, stored or recomputed), :mod:`.global_explain` and :mod:`.peppr` (the
drivers of ``mimic-explain``), :mod:`.figures` (their figures). The math they run lives in
:mod:`mimic_runner.explain`; file names come from :mod:`mimic_runner.rundir`.
"""
