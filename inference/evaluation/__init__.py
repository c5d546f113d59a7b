"""Measuring a model: metrics, the lesion-size rule, the evaluation harness and calibration.

Qt-free and app-free, so a training node or a server can run it; the ``xmedgpt eval``
and ``xmedgpt calibrate`` commands are thin argparse wrappers around it.

- :mod:`.metrics` — IoU matching, VQA accuracy, finding F1, Kendall's tau-b, timing;
- :mod:`.sizes` — the one lesion-size rule (small < 10 mm ≤ medium < 20 mm ≤ large);
- :mod:`.harness` — datasets, the runner, :func:`~.harness.evaluate`, the printed table;
- :mod:`.calibrate` — labelled records, judges, uncertainties, thresholds, the report.
"""
