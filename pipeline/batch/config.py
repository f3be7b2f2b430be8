"""Typed configuration of a dataset job, validated at construction. It nests the configs of the
parts it drives (model, dropping, decoding, image limits) rather than copying their fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hired_ops import DropConfig
from pipeline.configs import flat_params
from pipeline.data.images import DecodeLimits
from pipeline.model.config import ModelConfig, canonical_drop
from pipeline.model.engine import EngineLimits
from pipeline.model.generation import DEFAULT_PROMPT, GenerateOptions

# Unset pools on a GPU cluster: one vision and one LLM actor share each GPU.
AUTO_GPUS_PER_ACTOR = 0.5
# Unset pools on a GPU cluster: CPUs per actor (the model work is on the accelerator).
DEFAULT_POOL_CPUS = 0.5
# nested configs whose fields are MLflow params at the top level (method, budget, model, ...)
INLINE_PARAMS = frozenset({"model", "drop", "generate", "decode"})


@dataclass(frozen=True)
class PoolConfig:
    """One Ray actor pool: how many actors, what each holds, how many rows per call, where it runs.

    Attributes:
        size: actors in the pool (its minimum when max_size is set).
        max_size: autoscale the pool from size up to this many actors while work is queued (unset:
            a fixed pool; two GPU pools with ranges can take turns instead of overlapping).
        batch_size: rows per actor call.
        num_gpus: GPUs per actor, fractions allowed so the vision and LLM pools share one GPU
            (default: 0.5 when the Ray cluster has GPUs, else 0; Ray hides GPUs from actors that
            reserve none, so "CUDA when present" needs a reservation).
        num_cpus: logical CPUs each actor reserves in Ray (default: on a GPU cluster 0.5; on a
            CPU-only cluster a share of a node, the vision pool's the largest, with torch
            threads to match; see pipeline/batch/resources.py).
        resources: custom Ray resources each actor needs, which places the pool on the nodes that
            declare them (``ray start --resources '{"vision_gpu": 1}'``), e.g. {"vision_gpu": 1}.
    """

    size: int = 1
    max_size: int | None = None
    batch_size: int = 8
    num_gpus: float | None = None
    num_cpus: float | None = None
    resources: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"pool size must be >= 1, got {self.size}")
        if self.max_size is not None and self.max_size < self.size:
            raise ValueError(f"pool max_size ({self.max_size}) must be >= size ({self.size})")
        if self.resources is not None and not all(isinstance(v, (int, float)) and v >= 0 for v in self.resources.values()):
            raise ValueError(f"pool resources must map names to amounts >= 0, got {self.resources!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if (self.num_gpus is not None and self.num_gpus < 0) or (self.num_cpus is not None and self.num_cpus < 0):
            raise ValueError("num_gpus and num_cpus must be >= 0")

    def compute(self):
        """The pool as a Ray Data ``ActorPoolStrategy`` (fixed, or autoscaling up to max_size)."""
        import ray

        return ray.data.ActorPoolStrategy(min_size=self.size, max_size=self.max_size or self.size)

    def gpus(self, cluster_gpus: float) -> float:
        """GPUs each actor reserves on a cluster with ``cluster_gpus`` GPUs."""
        if self.num_gpus is not None:
            return self.num_gpus
        return AUTO_GPUS_PER_ACTOR if cluster_gpus > 0 else 0.0


@dataclass(frozen=True)
class HiredProcessorConfig:
    """The stages that turn images and prompts into answers, as one lazy step of a Ray Dataset
    (:func:`pipeline.batch.processor.build_processor`); named after Ray's own
    ``ray.data.llm.ProcessorConfig``. Every field has a default: the built-in model at HiRED 20%.

    Attributes:
        model: the checkpoint and its placement.
        drop: how visual tokens are dropped (method, budget, ...).
        generate: decoding (max_new_tokens, temperature, ...).
        decode: limits on input images (decompression bombs, huge files).
        prompt: instruction for rows whose prompt is missing.
        vision, llm: the two actor pools.
        decode_batch_size: rows per decode task.
        decode_resources: custom Ray resources each decode task needs, to keep the CPU decoding on
            the nodes that declare them (e.g. {"decode_cpu": 1}), apart from the GPU actors.
        max_num_seqs: rows each LLM actor decodes at once (continuous batching: within one call
            of llm.batch_size rows, a row whose caption ends frees its slot for the next row at
            the next step; set llm.batch_size above it for that to matter).
        max_num_batched_tokens: most tokens one decoding step of an LLM actor feeds the model
            (one per running row plus the padded prompts it admits).
        max_padding: largest padding share of one prefill in the LLM stage; a row that would push
            it higher is prefilled at the next step.
        storage_options: passed to fsspec for images named by path or URL (credentials,
            endpoints), and for a job's input and output.
        keep_image: keep the image column in the processor's output (it is dropped by default:
            it is the heaviest column, and the rows go on to be filtered and written).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    drop: DropConfig = field(default_factory=DropConfig)
    generate: GenerateOptions = field(default_factory=GenerateOptions)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    prompt: str = DEFAULT_PROMPT
    vision: PoolConfig = field(default_factory=PoolConfig)
    llm: PoolConfig = field(default_factory=PoolConfig)
    decode_batch_size: int = 8
    decode_resources: dict[str, float] | None = None
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 8192
    max_padding: float = 0.1
    storage_options: dict[str, Any] | None = None
    keep_image: bool = False

    def __post_init__(self) -> None:
        if self.decode_batch_size < 1:
            raise ValueError("decode_batch_size must be >= 1")
        if not 0.0 <= self.max_padding < 1.0:
            raise ValueError("max_padding must be in [0, 1)")
        self.engine_limits  # validates max_num_seqs and max_num_batched_tokens
        object.__setattr__(self, "drop", canonical_drop(self.drop))

    @property
    def engine_limits(self) -> EngineLimits:
        """The LLM stage's continuous-batching limits."""
        return EngineLimits(self.max_num_seqs, self.max_num_batched_tokens, self.max_padding)


@dataclass(frozen=True, kw_only=True)
class JobConfig(HiredProcessorConfig):
    """A captioning / question-answering job over a dataset: the processor's stages between
    input planning and resume on one side and worker-written Parquet files on the other.

    Attributes:
        input: a folder, glob, image, or Parquet/JSONL manifest (local or any fsspec URL).
        output: a folder (local or object store) that receives Parquet files.
        prompt: instruction for rows whose manifest gives none.
        resume: skip ids already in the output.
        retry_errors: first take the rows that ended in an error out of the output, so they are
            done again (a transient read failure need not stay an error).
        limit: process at most this many inputs (after resume filtering).
        min_rows_per_file: rows each output Parquet file holds, the last one of a run excepted
            (Ray Data's ``write_parquet`` name). Finished rows wait in Ray's object store until a
            file's worth is ready; an interrupted job redoes the rows not yet written.
        storage_options: passed to fsspec for the input and output (credentials, endpoints).
    """

    input: str
    output: str
    resume: bool = True
    retry_errors: bool = False
    limit: int | None = None
    # a lake's reader wants files of megabytes, not of one LLM batch: 10,000 of these rows are
    # about 1-3 MB of Parquet, and a million images 100 files instead of 125,000
    min_rows_per_file: int = 10_000

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("input is required: a folder, glob, image file or manifest")
        if not self.output:
            raise ValueError("output is required: a folder for the Parquet files")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if self.min_rows_per_file < 1:
            raise ValueError(f"min_rows_per_file must be >= 1, got {self.min_rows_per_file}")
        super().__post_init__()

    def to_params(self) -> dict[str, Any]:
        """Flat MLflow params: ``model``, ``method``, ``budget``, ..., ``vision.size``, ...; the
        storage options' values are masked (they may hold secrets)."""
        params = flat_params(self, INLINE_PARAMS)
        if self.storage_options:
            params["storage_options"] = {k: "***" for k in self.storage_options}
        return params

    def to_dict(self) -> dict[str, Any]:
        """The nested config as JSON-able data (the ``config.json`` artifact), secrets masked."""
        values = asdict(self)
        values["drop"]["budget"] = str(self.drop.budget) if self.drop.budget is not None else None
        if values.get("storage_options"):
            values["storage_options"] = {k: "***" for k in values["storage_options"]}
        return values
