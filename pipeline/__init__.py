"""Running HiRED at scale: the model halves, data in, Ray Data jobs, the Ray Serve endpoint,
MLflow tracking and experiments. Sub-packages by concern; imports point one way::

    experiments -> batch, tracking, model, data      (evaluation sweeps, Table-4 benchmarks)
    batch       -> model, data, tracking.memory      (the Ray Data job)
    serve       -> model, data                       (the Ray Serve endpoint)
    tracking    -> hired_ops                         (MLflow runs, metrics, figures)
    testbed     -> model, experiments, tracking      (the small model trained here)
    model, data -> hired_ops, torch, transformers    (no Ray, no MLflow: the GPU path runs them alone)

``configs`` (typed configs as plain data) is shared by all and imports only the standard library.
"""
