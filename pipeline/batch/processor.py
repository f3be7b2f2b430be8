"""HiRED as one lazy stage of a user's own Ray Dataset, shaped like Ray's ``ray.data.llm``:

    processor = build_processor(HiredProcessorConfig(), preprocess=..., postprocess=...)
    ds = processor(ray.data.read_images("s3://bucket/images/"))

Each row needs an ``image`` (bytes, a path or URL, a ``{bytes, path}`` struct, or pixels) and may
have a ``prompt``. Its other columns come back untouched, with ``generated_text`` and the
accounting columns of :data:`.columns.ADDED_SCHEMA` (``error`` set on a row that failed). The
job (:mod:`.driver`) runs the same stages between its own reader and writer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


from pipeline.model.loading import load_image_processor

from .columns import finish_table
from .config import HiredProcessorConfig
from .resources import ClusterShape, plan_resources
from .stages import LLMStage, VisionStage, decode_batch

Row = dict[str, Any]


# what a processor leaves unreserved on a CPU-only node for the user's own stages (Ray's
# default task reservation); the job's own read and write tasks take a quarter CPU instead
USER_STAGE_CPUS = 1.0
# the processor's last step only unpacks columns: a small share, like the job's read tasks
FINISH_CPUS = 0.25


def apply_stages(
    config: HiredProcessorConfig, dataset: Any, image_processor: Any, figures: int | None = None, spare_cpus: float = 0.0
):
    """``dataset`` (rows with ``image`` and optionally ``prompt``) through decode, the vision pool
    and the LLM pool: rows of the LLM stage's numpy columns (see :class:`LLMStage`; ``figures``
    adds a job's ``report`` column). ``image_processor`` is the model's, shipped to the decode
    tasks; ``spare_cpus``: see :func:`plan_resources`."""
    plan = plan_resources(config, ClusterShape.from_ray(), spare_cpus)
    dataset = dataset.map_batches(
        decode_batch,
        batch_size=config.decode_batch_size,
        batch_format="pyarrow",
        num_cpus=plan.decode_cpus,
        resources=config.decode_resources,
        fn_kwargs={"image_processor": image_processor, "config": config},
    )
    for stage, pool, extra in ((VisionStage, config.vision, {}), (LLMStage, config.llm, {"figures": figures})):
        resources = getattr(plan, stage.role)
        dataset = dataset.map_batches(
            stage,
            batch_size=pool.batch_size,
            batch_format="numpy",
            compute=pool.compute(),
            resources=pool.resources,
            num_gpus=resources.num_gpus or None,
            num_cpus=resources.num_cpus,
            fn_constructor_kwargs={"config": config, "threads": resources.threads, **extra},
        )
    return dataset


@dataclass
class Processor:
    """A lazy transformation of a Ray Dataset: ``processor(ds)`` adds the stages to ``ds``'s plan
    and returns the new Dataset; nothing runs until it is consumed.

    Attributes:
        config: the stages' settings.
        preprocess, postprocess: row functions (``dict -> dict``) run before and after, as
            ``Dataset.map`` runs them.
        preprocess_map_kwargs, postprocess_map_kwargs: passed to those ``map`` calls (resources,
            concurrency).
    """

    config: HiredProcessorConfig
    preprocess: Callable[[Row], Row] | None = None
    postprocess: Callable[[Row], Row] | None = None
    preprocess_map_kwargs: dict[str, Any] = field(default_factory=dict)
    postprocess_map_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, dataset: Any) -> Any:
        import ray

        # a missing model fails here, when the processor is applied, not in every decode task
        image_processor = load_image_processor(self.config.model.name)
        if not ray.is_initialized():  # as Ray Data would on first use; the pools are sized from it
            ray.init()
        if self.preprocess is not None:
            dataset = dataset.map(self.preprocess, **self.preprocess_map_kwargs)
        dataset = apply_stages(self.config, dataset, image_processor, spare_cpus=USER_STAGE_CPUS)
        dataset = dataset.map_batches(finish_table, batch_format="pyarrow", batch_size=None, num_cpus=FINISH_CPUS)
        if self.postprocess is not None:
            dataset = dataset.map(self.postprocess, **self.postprocess_map_kwargs)
        return dataset


def build_processor(
    config: HiredProcessorConfig | None = None,
    preprocess: Callable[[Row], Row] | None = None,
    postprocess: Callable[[Row], Row] | None = None,
    preprocess_map_kwargs: dict[str, Any] | None = None,
    postprocess_map_kwargs: dict[str, Any] | None = None,
) -> Processor:
    """A :class:`Processor` for ``config`` (default: the built-in model at HiRED 20%), with
    optional row functions before and after, as ``ray.data.llm.build_processor`` takes them."""
    return Processor(
        config if config is not None else HiredProcessorConfig(),
        preprocess, postprocess, dict(preprocess_map_kwargs or {}), dict(postprocess_map_kwargs or {}),
    )
