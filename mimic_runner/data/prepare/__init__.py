"""Preparers: turn public dataset layouts into the HDF5 schema (`mimic-data prepare ...`).

- :func:`prepare_mimic_egd`: PhysioNet Eye Gaze Data for Chest X-rays + MIMIC-CXR-JPG
  (grey images, gaze, fixations; split by patient);
- :func:`prepare_malaria`: NIH malaria cell images (RGB; split by the patient prefix);
- :func:`prepare_folder`: any ``root/<class>/<image>`` tree with optional heatmaps, fixation
  or ROI masks (random stratified split or a split file).

Each writes through :func:`mimic_runner.data.schema.write_dataset` (atomic, validated) and
returns a :class:`PrepareResult` whose ``summary()`` reports what was written and skipped.
"""

from mimic_runner.data.prepare._common import PrepareResult, SkipLog
from mimic_runner.data.prepare.folder import prepare_folder
from mimic_runner.data.prepare.malaria import prepare_malaria
from mimic_runner.data.prepare.mimic_egd import prepare_mimic_egd

__all__ = ["PrepareResult", "SkipLog", "prepare_folder", "prepare_malaria", "prepare_mimic_egd"]
