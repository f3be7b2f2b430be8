"""Load a LLaVA-NeXT / LLaVA model and its processor: a built-in testbed name, a local
directory, or a hub id, the ordinary transformers way."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .assembled import is_assembled, materialise
from .base_llm import ModelNotFoundError
from .builtin import build_image_processor, build_model, parse_builtin

# built-in names of checkpoints trained here and shipped in the repository; they load like any
# saved checkpoint directory
TESTBED_MODEL = "hired/testbed-llava-next"
SHIPPED = {TESTBED_MODEL: Path(__file__).resolve().parents[1] / "testbed" / "weights"}
# the trained testbed rather than a random built-in, so that a bare command gives real answers on
# the bundled samples (scenes of the kind it was trained on)
DEFAULT_MODEL = TESTBED_MODEL


def _shipped_or(name: str) -> str:
    """The directory of a shipped checkpoint's name; any other name as it is."""
    return str(SHIPPED[name]) if name in SHIPPED else name


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# CPU flags (as /proc/cpuinfo spells them) of native bf16 matmuls. Measured on 2 cores, ViT-L
# tower over 5 tiles: Intel AMX 7.2 s fp32 -> 2.1 s bf16; AMD EPYC with AVX512-BF16 (no AMX)
# 25.4 s -> 10.3 s; AMD EPYC with AVX2 only 15.7 s -> 94 s (emulated bf16 is 6x slower).
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def pick_dtype(
    device: torch.device,
    dtype: str | None = None,
    flags: frozenset[str] | None = None,
    saved: torch.dtype | None = None,
) -> torch.dtype:
    """``dtype`` if given; else fp32 for a checkpoint ``saved`` in fp32, and otherwise the fastest
    precision the device runs natively: bf16 on GPUs that support it (fp16 on older ones), bf16
    on CPUs whose ``flags`` (default: this machine's) include native bf16 matmuls, fp32 on other
    CPUs, where bf16 is emulated and slower.

    "auto" never runs a checkpoint below the precision it was saved in (transformers' own "auto"
    is the saved dtype): an fp32 checkpoint was trained or checked in fp32, and the shipped
    testbed, for one, loses its answers in bf16 once tokens are dropped (docs/testbed.md).
    Released LLaVA-NeXT checkpoints are saved in half precision, so they still get the fast path.
    """
    if dtype and dtype != "auto":
        try:
            return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        except KeyError:
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}") from None
    if saved == torch.float32:
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags):
        return torch.bfloat16
    return torch.float32


def saved_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's ``config`` says its weights were saved in, if it says one."""
    saved = getattr(config, "dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if isinstance(saved, torch.dtype) else None


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
    half: str | None = None,
):
    """``(model, processor)`` for ``name``, on ``device`` in ``dtype``, in eval mode.

    ``name`` is a built-in (the default ``hired/testbed-llava-next``, trained here; the random
    ``hired/tiny-llava-next``, ``hired/bench-llava-next``, ...), a directory saved with
    ``save_pretrained``, or a hub id (needs network or the local hub cache). ``half``
    ("vision" or "language") keeps only that half (see :func:`keep_half`), released before the
    model moves to the device so the accelerator never holds the other half.
    """
    target = pick_device(device)
    name = _shipped_or(name)
    builtin = parse_builtin(name)
    if builtin is not None:
        model, processor = build_model(*builtin, seed=seed, dtype=pick_dtype(target, dtype), device=target)
        if half is not None:
            keep_half(model, half)
        return model.to(target), processor
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise ModelNotFoundError(f"model directory {name!r} has no config.json: point --model at a saved checkpoint")
    source = str(local) if local.exists() else name
    if is_assembled(local):  # shipped as parts (the testbed): merged once, then a plain checkpoint
        source = str(materialise(local))
    try:
        processor = AutoProcessor.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        torch_dtype = pick_dtype(target, dtype, saved=saved_dtype(config))
        model = AutoModelForImageTextToText.from_pretrained(source, config=config, dtype=torch_dtype)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        raise ModelNotFoundError(
            f"cannot load model {name!r}: it is neither a built-in (hired/testbed-llava-next, "
            "hired/tiny-llava-next, ...), nor a local directory, nor in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set, so the hub was not asked)" if offline else "")
            + ". Download it with `huggingface-cli download` on a machine with network access, "
            "or pass a local path."
        ) from error
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"
    if half is not None:
        keep_half(model, half)
    return model.to(target).eval(), processor


def keep_half(model: torch.nn.Module, half: str) -> torch.nn.Module:
    """Free the half of a LLaVA model that a split deployment never runs.

    ``half="vision"`` keeps the tower, the projector and the LLM's input embedding table (an
    instruction-aware selection scores tokens against the prompt's embeddings; the table is
    32000 x 4096 on a 7B LLaVA-NeXT, 0.26 GB in fp16), the LLM's layers and head go;
    ``"language"`` keeps the projector and the LLM (generation from embeddings never runs the
    tower). The freed submodules are removed (set to ``None``), so their memory goes and
    ``model.to(device)`` moves only the rest.
    """
    inner = getattr(model, "model", model)
    if half == "vision":
        table = model.get_input_embeddings()
        inner.language_model = None
        # transformers' get_input_embeddings() finds an ``embed_tokens`` attribute first
        inner.embed_tokens = table
        if getattr(model, "lm_head", None) is not None:
            model.lm_head = None
    elif half == "language":
        inner.vision_tower = None
    else:
        raise ValueError(f"half must be 'vision' or 'language', got {half!r}")
    return model


def load_image_processor(name: str = DEFAULT_MODEL):
    """Only the image processor of ``name``: what CPU decode tasks need, without the weights."""
    name = _shipped_or(name)
    builtin = parse_builtin(name)
    if builtin is not None:
        return build_image_processor(builtin[0])
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name)
    except OSError as error:
        raise ModelNotFoundError(
            f"cannot load the image processor of {name!r}: pass a built-in name, a local checkpoint "
            "directory, or a hub id present in the local cache"
        ) from error
