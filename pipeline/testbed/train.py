"""Train the testbed model as LLaVA is trained, in three stages, resumable and reproducible from a seed.

0. ``cls``: the vision tower alone, from scratch, with two heads on the layer LLaVA reads
   features from (``hidden_states[-2]``): each tile's CLS must say which objects and glyph lie in
   that tile (multi-label), so its attention there (what HiRED ranks patches by) has to find them;
   and each patch token must say which object it shows, one class of :data:`PATCH_CLASSES`, so the
   features the projector reads name what is where (CLIP's contrastive pre-training gives its patch
   tokens such local content; a from-scratch tower needs it asked for). The heads are dropped
   afterwards.
1. ``align``: the projector (and the newline embedding) on captions, tower and LLM frozen:
   LLaVA's feature alignment.
2. ``instruct``: multi-turn conversations (several VQA, multiple-choice and POPE questions and the
   caption per image, as LLaVA's instruction data packs them): LoRA adapters on every linear layer
   of the LLM (``peft``) and the projector, the tower frozen, so the CLS attention HiRED reads stays
   what stage 0 made it.

Each stage is a ``transformers.Trainer`` run (AdamW, cosine schedule with warm-up) into
``<work_dir>/<stage>``: it checkpoints every ``save_steps`` and a rerun resumes from the last
checkpoint; a finished stage leaves ``final`` and is skipped. :func:`.shipping.export` then writes only what
was trained. The data (:mod:`.training_data`) are generated on the fly from the "train" split, standard and
dense scenes alternating; the held-out split is never read here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hired_ops import VisionGeometry, vision_tower
from pipeline.model.assembled import ADAPTER_DIR, is_assembled, load_parts
from pipeline.model.loading import SHIPPED, TESTBED_MODEL

from . import questions as q
from .architecture import TowerSize, build_model
from .scenes import Scene, render
from .text_turns import cached_text_turns
from .training_data import (
    CLS_LABELS, PATCH_CLASSES, SceneItems, WithText, collate, encode_conversation, patch_targets, text_count,
    tile_targets,
)

logger = logging.getLogger(__name__)

WEIGHTS_DIR = SHIPPED[TESTBED_MODEL]
STAGES = ("cls", "align", "instruct")
# LoRA on every linear layer of the LLM (attention and MLP), none in the tower
LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass(frozen=True)
class TestbedTrainConfig:
    """What :func:`train` does. Validated at construction.

    Attributes:
        seed: seeds the weights, the training scenes and their order.
        cls_steps: optimiser steps of stage 0 (the tower's CLS and patch objectives).
        align_steps: optimiser steps of stage 1 (captions; the projector only).
        instruct_steps: optimiser steps of stage 2 (conversations; LoRA and the projector).
        cls_batch_size: scenes per step in stage 0.
        batch_size: conversations per step in stages 1 and 2.
        cls_lr: peak learning rate of stage 0.
        align_lr: peak learning rate of stage 1.
        lr: peak learning rate of stage 2.
        lora_rank: rank of the LoRA adapters (alpha is twice the rank).
        lora_dropout: dropout on the adapters' inputs.
        warmup: share of each stage's steps spent warming up.
        per_task: questions per task (vqa, multiple_choice, pope) in one stage-2 conversation.
        text_share: share of stage 2's conversations that are text-only, answered by the base LLM
            (:mod:`.text_turns`), so the adapters keep its text answers.
        loss_average: how stage 2 averages the answer tokens' loss (:func:`answer_weights`):
            ``token``, every answer token of the batch alike (LLaVA's); ``reply``, every
            conversation of the batch alike and, within one, every reply alike, so a one-letter
            choice weighs as much as the caption beside it.
        save_steps: steps between checkpoints a rerun resumes from.
        work_dir: the stages' checkpoints.
        output: where the shipped parts are written (``from_pretrained`` loads them by name).
        tracking_uri, experiment: the MLflow run; ``tracking_uri=None`` logs nothing.
        log_every: steps between logged losses.
        threads: torch intra-op threads (CPU).
        bf16: bf16 autocast (mixed precision; the weights stay fp32). ``None`` turns it on where
            bf16 matmuls are native: GPUs that support it, and CPUs with AMX or AVX512-BF16
            (``pipeline.model.loading.NATIVE_BF16_FLAGS``); elsewhere it is emulated and slower.
        tower: the vision tower's dimensions.
        init_from: a shipped model (its name or parts folder) to go on training: stages 0 and 1
            are not run (their results are in it), and stage 2 trains its adapter and projector
            for ``instruct_steps`` more steps on this seed's scenes, with a schedule of its own.
            ``None`` trains from nothing.
    """

    seed: int = 0
    # the patch tokens tell shapes apart only after ~2,000 steps (patch accuracy 0.40 at 1,000,
    # 0.84 at 2,000, 0.97 at 5,000-6,000 on unseen training scenes; docs/testbed.md)
    cls_steps: int = 6000
    align_steps: int = 60
    instruct_steps: int = 200
    cls_batch_size: int = 8
    batch_size: int = 4
    cls_lr: float = 1e-3
    align_lr: float = 1e-3
    lr: float = 5e-4
    lora_rank: int = 8
    # no dropout: on a CPU its masks (a Bernoulli draw over the input of each of the 210 adapted
    # layers) were ~40% of a stage-2 step (30 s with them, 17.5 s without, 2-core AVX2 CPU)
    lora_dropout: float = 0.0
    warmup: float = 0.05
    per_task: int = 3
    # 300 stage-2 steps without text wore the text answers away (docs/testbed.md); LLaVA keeps
    # text-only conversations in its mix for the same reason. A quarter is a first guess, not tuned.
    text_share: float = 0.25
    # a stage-2 conversation labels ~48 tokens, of which the 3 choice letters are 6%: under
    # "token" multiple choice stayed at chance through 600 steps (docs/testbed.md)
    loss_average: Literal["token", "reply"] = "token"
    save_steps: int = 10
    work_dir: str = "outputs/testbed-training"
    output: str = str(WEIGHTS_DIR)
    tracking_uri: str | None = "sqlite:///mlflow.db"
    experiment: str = "hired-testbed"
    log_every: int = 5
    threads: int = 2
    bf16: bool | None = None
    tower: TowerSize = field(default_factory=TowerSize)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.init_from is not None and not is_assembled(self.init_parts):
            raise ValueError(
                f"init_from={self.init_from!r} is not a shipped model: give {TESTBED_MODEL!r} or a folder "
                "that `hired train-testbed --output` wrote"
            )
        if min(self.cls_steps, self.align_steps, self.instruct_steps) < 0:
            raise ValueError("step counts must be >= 0")
        if min(self.batch_size, self.cls_batch_size, self.per_task, self.log_every, self.threads, self.save_steps) < 1:
            raise ValueError("batch sizes, per_task, save_steps, log_every and threads must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if min(self.cls_lr, self.align_lr, self.lr) <= 0:
            raise ValueError("learning rates must be > 0")
        if self.loss_average not in ("token", "reply"):
            raise ValueError(f"loss_average must be 'token' or 'reply', got {self.loss_average!r}")
        if not 0.0 <= self.text_share < 1.0:
            raise ValueError(f"text_share must be in [0, 1), got {self.text_share}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def init_parts(self) -> Path:
        """The parts folder ``init_from`` names."""
        return Path(SHIPPED.get(self.init_from, self.init_from))


# -- models the stages train ----------------------------------------------------------------------


class SceneHeads(nn.Module):
    """Stage 0's classifiers on a tower layer: multi-label on the CLS token, one class per patch."""

    def __init__(self, tower: nn.Module, layers: int, labels: int, classes: int) -> None:
        super().__init__()
        self.tower = tower
        self.layers = layers
        self.classifier = nn.Linear(tower.config.hidden_size, labels)
        self.patches = nn.Linear(tower.config.hidden_size, classes)

    def hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles ``(P, 3, 64, 64)`` -> ``(P, 1 + N, D)``: CLS and patch tokens after ``layers``
        layers, post-layernormed, as the heads read them."""
        hidden = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        for layer in self.tower.encoder.layers[: self.layers]:
            hidden = layer(hidden, None)
        return self.tower.post_layernorm(hidden)

    def forward(self, pixel_values: torch.Tensor, cls_targets: torch.Tensor, patch_targets: torch.Tensor) -> dict:
        """Tiles ``(P, 3, 64, 64)`` and their targets ``(P, labels)`` 0/1, ``(P * N,)`` class ids ->
        the CLS logits' BCE plus the patch logits' cross-entropy, from the hidden states after
        ``layers`` layers.

        The patches are one class each (softmax), not multi-label: most patches are background,
        and a per-label BCE let the tower sit at predicting "nothing" (patch accuracy 0.33 after
        1,200 steps, against 0.41 with the softmax, and a plateau from step 400)."""
        hidden = self.hidden_states(pixel_values)
        cls_loss = nn.functional.binary_cross_entropy_with_logits(self.classifier(hidden[:, 0]), cls_targets)
        patch_loss = nn.functional.cross_entropy(self.patches(hidden[:, 1:]).flatten(0, 1), patch_targets)
        loss = cls_loss + patch_loss
        return {"loss": loss}


def answer_weights(targets: torch.Tensor, average: str = "token") -> torch.Tensor:
    """``(B, T)`` weights of the labelled positions of ``targets`` ``(B, T)`` (-100 elsewhere),
    summing to 1 over the batch.

    ``token``: each labelled token ``1 / labelled tokens``. ``reply``: a reply is a run of labelled
    positions; each token gets ``1 / (its reply's length * the row's replies * rows with a reply)``.
    Written here because ``Trainer``'s loss averages over tokens only.
    """
    labelled = targets != -100
    if average == "token":
        return labelled.float() / labelled.sum().clamp(min=1)
    starts = labelled & ~nn.functional.pad(labelled[:, :-1], (1, 0), value=False)
    reply = starts.cumsum(1) * labelled  # 1..R along a row, 0 where unlabelled
    lengths = torch.zeros(targets.shape[0], targets.shape[1] + 1, device=targets.device)
    lengths.scatter_add_(1, reply, labelled.float())  # tokens per reply, by reply number
    replies = starts.sum(1, keepdim=True)
    rows = (replies > 0).sum()
    return labelled / (lengths.gather(1, reply).clamp(min=1) * replies.clamp(min=1) * rows.clamp(min=1))


def _lm_trainer_class(average: str = "token"):
    """A ``Trainer`` whose loss reads the LM head only where a label follows, weighting the answer
    tokens by :func:`answer_weights`.

    The stock loss projects every position onto SmolLM2's 49k-token vocabulary; here only the
    answer tokens are labelled (a few percent of a conversation), so the head runs on the union of
    the labelled positions of the batch (``logits_to_keep``), a fifth less compute per step.
    """
    from transformers import Trainer

    class AnswerLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            targets = labels[:, 1:]
            keep = (targets != -100).any(0).nonzero().squeeze(1)
            outputs = model(**inputs, logits_to_keep=keep)
            picked = targets[:, keep]
            losses = nn.functional.cross_entropy(
                outputs.logits.flatten(0, 1).float(), picked.flatten(), ignore_index=-100, reduction="none"
            )
            loss = (losses.view_as(picked) * answer_weights(targets, average)[:, keep]).sum()
            return (loss, outputs) if return_outputs else loss

    return AnswerLossTrainer


# -- stages ---------------------------------------------------------------------------------------


def _run_stage(name: str, model: nn.Module, items, collator, steps: int, lr: float, batch: int,
               config: TestbedTrainConfig, log, trainer_class=None) -> Path:
    """Train ``model`` for ``steps`` with a Trainer in ``work_dir/name``, resuming from its last
    checkpoint; returns the stage folder. A stage whose ``final`` exists is not run again."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(config.work_dir) / name
    if (folder / "final").exists() or steps == 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    offset = {"cls": 0, "align": config.cls_steps, "instruct": config.cls_steps + config.align_steps}[name]

    class ToRun(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            log({f"{name}/{key}": value for key, value in (logs or {}).items() if isinstance(value, (int, float))},
                offset + state.global_step)

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(folder),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        weight_decay=0.0 if name == "instruct" else 0.01,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(steps * config.warmup)),
        max_grad_norm=1.0,
        logging_steps=config.log_every,
        save_steps=config.save_steps,
        save_total_limit=1,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        bf16=use_bf16(config.bf16),
    )
    trainer = (trainer_class or Trainer)(
        model=model, args=args, train_dataset=items, data_collator=collator, callbacks=[ToRun()]
    )
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(folder)))
    return folder


def use_bf16(requested: bool | None) -> bool:
    """Whether the stages train under bf16 autocast: ``requested``, or, for ``None``, where the
    device runs bf16 matmuls natively (what ``pick_dtype`` would run a half-precision model in)."""
    if requested is not None:
        return requested
    from pipeline.model.loading import pick_device, pick_dtype

    return pick_dtype(pick_device(None)) == torch.bfloat16


def _final_state(path: Path, module: nn.Module) -> dict[str, torch.Tensor]:
    """A finished stage's trained parameters of ``module`` (those that require grad), written to
    ``path`` the first time and read back from it on every run after, so a rerun that skips the
    stage starts the next one from the same weights."""
    from safetensors.torch import load_file, save_file

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in module.named_parameters() if p.requires_grad}, path)
    return load_file(path)


def train_cls(model, processor, config: TestbedTrainConfig, log) -> None:
    """Stage 0: the tower's CLS and patch objectives; leaves the trained tower in ``model``."""
    geometry = VisionGeometry.from_model(model)
    heads = SceneHeads(vision_tower(model), geometry.layers_to_run, len(CLS_LABELS), len(PATCH_CLASSES))

    def make(scene: Scene, rng) -> dict:
        pixels = processor.image_processor(images=[render(scene)], return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, "cls_targets": tile_targets(scene, geometry), "patch_targets": patch_targets(scene, geometry)}

    def stack(items: list[dict]) -> dict:
        return {key: torch.cat([item[key] for item in items]) for key in items[0]}

    items = SceneItems(config.seed, "cls", config.cls_steps * config.cls_batch_size, make)
    folder = _run_stage("cls", heads, items, stack, config.cls_steps, config.cls_lr, config.cls_batch_size, config, log)
    if config.cls_steps:
        heads.load_state_dict(_final_state(folder / "final" / "heads.safetensors", heads))


def _conversations(processor, stage: str, steps: int, config: TestbedTrainConfig, turns_of):
    """Stage 1 or 2's items and collator: conversations about training scenes."""
    items = SceneItems(
        config.seed, stage, steps * config.batch_size,
        lambda scene, rng: encode_conversation(processor, render(scene), turns_of(scene, rng)),
    )
    return items, lambda batch: collate(batch, processor.tokenizer.pad_token_id)


def train_align(model, processor, config: TestbedTrainConfig, log) -> None:
    """Stage 1: captions, only the projector and the newline embedding train."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    model.model.image_newline.requires_grad_(True)
    items, collator = _conversations(processor, "align", config.align_steps, config, lambda s, r: [q.describe(s)])
    folder = _run_stage("align", model, items, collator, config.align_steps, config.align_lr, config.batch_size,
                        config, log, _lm_trainer_class())
    if config.align_steps:
        model.load_state_dict(_final_state(folder / "final" / "aligned.safetensors", model), strict=False)
    model.requires_grad_(False)


def _adapter(model, config: TestbedTrainConfig):
    """Stage 2's ``PeftModel``: new LoRA adapters (and a trainable copy of the projector), or,
    with ``init_from``, that model's own, trainable again."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.init_from is None:
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            lora_dropout=config.lora_dropout,
            target_modules=LORA_TARGETS,
            modules_to_save=["multi_modal_projector"],
        )
        return get_peft_model(model, lora)
    saved = config.init_parts / ADAPTER_DIR
    lora = LoraConfig.from_pretrained(saved)
    if lora.r != config.lora_rank:
        raise ValueError(f"{saved} has LoRA rank {lora.r}; --lora-rank {config.lora_rank} cannot go on training it")
    lora.lora_dropout = config.lora_dropout
    model.requires_grad_(False)  # as stage 1 leaves a model trained from nothing
    return PeftModel.from_pretrained(model, saved, config=lora, is_trainable=True)


def train_instruct(model, processor, config: TestbedTrainConfig, log):
    """Stage 2: conversations; LoRA on the LLM and the projector train. Returns the ``PeftModel``."""
    from peft import PeftModel

    final = Path(config.work_dir) / "instruct" / "final"
    if final.exists():
        return PeftModel.from_pretrained(model, final)
    # the base LLM answers the text questions before an adapter changes it
    texts = cached_text_turns(
        Path(config.work_dir) / "instruct" / "text_turns.json", model, processor,
        text_count(config.instruct_steps * config.batch_size, config.text_share), config.seed,
    )
    peft_model = _adapter(model, config)
    scenes, collator = _conversations(
        processor, "instruct", config.instruct_steps, config, lambda s, r: q.training_questions(s, r, config.per_task)
    )
    items = WithText(scenes, texts, config.text_share, lambda turn: encode_conversation(processor, None, [turn]))
    _run_stage("instruct", peft_model, items, collator, config.instruct_steps, config.lr, config.batch_size,
               config, log, _lm_trainer_class(config.loss_average))
    if config.instruct_steps:
        peft_model.save_pretrained(final)
    return peft_model


def _claim_work_dir(config: TestbedTrainConfig) -> None:
    """Note in ``work_dir`` what its run starts from, and refuse to resume a run that started
    elsewhere: a finished stage there would otherwise be taken for this run's."""
    folder = Path(config.work_dir)
    marker = folder / "init_from.txt"
    start = str(config.init_parts.resolve()) if config.init_from else "nothing"
    if marker.exists() and marker.read_text().strip() != start:
        raise ValueError(
            f"{folder} holds a run that started from {marker.read_text().strip()}, not {start}: give --work-dir another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(start + "\n")


def train(config: TestbedTrainConfig) -> dict[str, float]:
    """Build, train (resuming where a previous run stopped) and export the testbed model; returns
    ``wall_s`` and the parameter counts of what was shipped."""
    from pipeline.tracking.runs import TrackingConfig, start_job_run

    from .shipping import export

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    _claim_work_dir(config)
    if config.init_from is None:
        model, processor = build_model(config.tower, config.seed)
    else:
        model, processor = load_parts(config.init_parts)
    params = {k: v for k, v in asdict(config).items() if k != "tower"}
    params.update({f"tower_{k}": v for k, v in asdict(config.tower).items()})
    tracking = TrackingConfig(
        tracking_uri=config.tracking_uri,
        experiment=config.experiment,
        enabled=config.tracking_uri is not None,
        log_system_metrics=False,
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    with start_job_run(tracking, params) as run:
        def log(metrics: dict[str, float], step: int) -> None:
            run.log_metrics(metrics, step)

        if config.init_from is None:
            train_cls(model, processor, config, log)
            train_align(model, processor, config, log)
        peft_model = train_instruct(model, processor, config, log)
        summary = export(peft_model, processor, Path(config.output))
        summary["wall_s"] = time.perf_counter() - start
        run.log_metrics({f"final/{key}": value for key, value in summary.items()})
    logger.info("saved the testbed model to %s: %s", config.output, summary)
    return summary
