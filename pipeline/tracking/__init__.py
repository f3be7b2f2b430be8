"""MLflow: runs and where they go (``runs``), a job's metrics from its rows (``job_metrics``),
logging a finished job (``results``), kept-patch figures (``figures``) and the peak memory each
actor reports (``memory``, which imports neither MLflow nor matplotlib: every actor loads it).
"""
