"""Measuring a model: metrics, the lesion-size rule, the evaluation harness and calibration.

Qt-free and app-free, so a training node or a server can run it; the ``xmedgpt eval``
and ``xmedgpt calibrate`` commands are thin argparse wrappers around it.
"""
