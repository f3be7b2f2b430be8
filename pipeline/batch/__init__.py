"""The Ray Data stages and the dataset job built on them: ``HiredProcessorConfig``,
``JobConfig`` and ``PoolConfig`` (``config``), HiRED as a lazy step of a user's own Dataset
(``processor``), the decode / vision / LLM stages (``stages``; the LLM stage batches continuously
with ``pipeline.model.engine``), the user's columns carried through them (``columns``), the output
columns (``schema``) and files (``output``), and the driver that runs the job (``driver``).
Imports ``model``, ``data``, ``tracking.memory`` and Ray.
"""
