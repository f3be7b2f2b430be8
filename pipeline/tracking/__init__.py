"""MLflow: runs and where they go (``runs``), run names that say what ran (``naming``), a job's
metrics from its rows (``job_metrics``), logging a finished job (``results``), live metrics and
progress lines while it runs (``live``), the data it read as an MLflow dataset (``datasets``),
kept-patch figures (``figures``) and the peak memory each actor reports (``memory``, which
imports neither MLflow nor matplotlib: every actor loads it).
"""
