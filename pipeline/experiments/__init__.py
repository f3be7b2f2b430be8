"""Experiments over many settings: evaluation metrics (``scoring``, ``choices``) and tasks
(``tasks``), sweep settings and report CSV (``settings``), labelled sets (``labelled``), bootstrap
intervals over images (``intervals``), the
accuracy sweep (``evaluation``, the paper's Table 3) and the in-process benchmark
(``benchmarking``, ``measure``, ``bench_report``: Table 4). Imports ``batch``, ``tracking``,
``model`` and ``data``.
"""
