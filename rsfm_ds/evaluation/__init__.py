"""Evaluation metrics, one module per task; import from the module you need.

- :mod:`rsfm_ds.evaluation.rotated_map`: rotated-box mAP (DOTA devkit Task 1 by default,
  mmrotate's variant, DIOR-R) over ``Task1_<class>.txt`` detections and DOTA / DIOR-R labels.

Nothing is imported here, so using one metric never loads the others' dependencies.
"""
