"""The dataset job on Ray Data: ``JobConfig`` (``config``), the decode / vision / LLM stages
(``stages``; the LLM stage batches continuously with ``pipeline.model.engine``), the output
columns (``schema``) and the driver that runs and writes it (``driver``). Imports ``model``,
``data``, ``tracking.memory`` and Ray.
"""
