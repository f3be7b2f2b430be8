"""The dataset job on Ray Data: ``JobConfig`` (``config``), the decode / vision / LLM stages
(``stages``), length-grouped LLM batches (``batching``), the output columns (``schema``) and the
driver that runs and writes it (``driver``). Imports ``model``, ``data``, ``tracking.memory``
and Ray.
"""
