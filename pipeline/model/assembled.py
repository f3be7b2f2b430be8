"""A checkpoint shipped as parts: a base LLM from a package plus only what training made.

A parts folder (``hired_parts.json`` beside a LLaVA-NeXT ``config.json``) holds the trained
tower, newline embedding and new token rows (``testbed.safetensors``), a ``peft`` LoRA adapter
with the trained projector (``adapter/``), and the processor's image settings and chat template.
The base LLM and its tokenizer come from the package ``hired_parts.json`` names
(:class:`~pipeline.model.base_llm.PackagedGGUF`). :func:`assemble` merges them into an ordinary
``LlavaNextForConditionalGeneration`` (the adapter merged into the LLM's weights), the class a
released checkpoint loads as, so every later step (dtype, halves, devices, dropping) is the stock
path.

transformers has no loader for "base weights from one package, trained pieces from a folder",
and dequantising the GGUF takes ~45 s on two cores, which every Ray actor and Serve replica would
pay. So both the dequantised base (:func:`base_checkpoint`) and the merged model
(:func:`materialise`) are cached on disk as ordinary safetensors checkpoints, under
``$HIRED_CACHE`` (default ``~/.cache/hired``), named by the checksums of what they were made
from, and written atomically under a file lock, since several actors start at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from .base_llm import PackagedGGUF

PARTS_FILE = "hired_parts.json"
WEIGHTS_FILE = "testbed.safetensors"
ADAPTER_DIR = "adapter"
# the rows added to the base vocabulary (the image token) in WEIGHTS_FILE
ADDED_EMBEDDINGS = "added_embeddings"


def is_assembled(path: str | Path) -> bool:
    """Whether ``path`` is a parts folder rather than a whole checkpoint."""
    return (Path(path) / PARTS_FILE).is_file()


def cache_root() -> Path:
    """Where derived checkpoints are cached: ``$HIRED_CACHE``, else ``$XDG_CACHE_HOME/hired``,
    else ``~/.cache/hired``."""
    if os.environ.get("HIRED_CACHE"):
        return Path(os.environ["HIRED_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hired"


def _cached(folder: Path, write) -> Path:
    """``folder``, made by ``write(scratch)`` into a scratch folder first and renamed into place,
    under a file lock, unless it exists (several actors may ask at once; a crash leaves no half)."""
    from filelock import FileLock

    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():  # another process wrote it while this one waited
            return folder
        scratch = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        write(scratch)
        os.replace(scratch, folder)
    return folder


def base_checkpoint(gguf: PackagedGGUF) -> Path:
    """The base LLM and tokenizer as an ordinary fp32 checkpoint folder, dequantised from the
    package's GGUF on first use and cached."""

    def write(scratch: Path) -> None:
        model, tokenizer = gguf.load(torch.float32)
        # the weights are plain fp32 once dequantised: save them as an ordinary checkpoint
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)

    return _cached(cache_root() / f"{gguf.package}-{gguf.version}-{gguf.sha256[:16]}", write)


def load_base(gguf: PackagedGGUF):
    """``(LlamaForCausalLM, tokenizer)`` of ``gguf`` in fp32, through :func:`base_checkpoint`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = base_checkpoint(gguf)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def _processor(parts_dir: Path, tokenizer):
    """The processor saved in ``parts_dir`` around ``tokenizer`` (``AutoProcessor`` would look for
    tokenizer files there, and the tokenizer comes from the base package instead)."""
    import transformers
    from transformers import AutoImageProcessor

    spec = json.loads((parts_dir / "processor_config.json").read_text())
    kwargs = {k: v for k, v in spec.items() if k not in ("image_processor", "processor_class")}
    template = parts_dir / "chat_template.jinja"
    return getattr(transformers, spec["processor_class"])(
        image_processor=AutoImageProcessor.from_pretrained(parts_dir),
        tokenizer=tokenizer,
        chat_template=template.read_text() if template.is_file() else None,
        **kwargs,
    )


def load_parts(parts_dir: str | Path):
    """``(model, processor)`` of a parts folder before its adapter: the base LLM with the trained
    tower, newline, token rows and generation config, fp32, on the CPU. :func:`assemble` merges
    the adapter in; ``hired train-testbed --init-from`` trains it further."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, GenerationConfig, LlavaNextForConditionalGeneration

    parts_dir = Path(parts_dir)
    parts = json.loads((parts_dir / PARTS_FILE).read_text())
    base, tokenizer = load_base(PackagedGGUF(**parts["base"]))
    tokenizer.add_tokens(parts["added_tokens"], special_tokens=True)
    tokenizer.padding_side = "left"
    model = LlavaNextForConditionalGeneration(AutoConfig.from_pretrained(parts_dir))
    trained = load_file(parts_dir / WEIGHTS_FILE)
    language = base.model.state_dict()
    language["embed_tokens.weight"] = torch.cat([language["embed_tokens.weight"], trained.pop(ADDED_EMBEDDINGS)])
    model.model.language_model.load_state_dict(language)
    _, unexpected = model.load_state_dict(trained, strict=False)
    if unexpected:
        raise ValueError(f"{parts_dir / WEIGHTS_FILE} holds tensors the model does not have: {unexpected[:5]}")
    model.generation_config = GenerationConfig.from_pretrained(parts_dir)
    return model, _processor(parts_dir, tokenizer)


def assemble(parts_dir: str | Path):
    """``(model, processor)`` merged from a parts folder: fp32, on the CPU, in eval mode."""
    from peft import PeftModel

    model, processor = load_parts(parts_dir)
    model = PeftModel.from_pretrained(model, Path(parts_dir) / ADAPTER_DIR).merge_and_unload()
    return model.eval(), processor


def parts_digest(parts_dir: Path) -> str:
    """A checksum of every file in a parts folder (it names the merged checkpoint's cache)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in parts_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(parts_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def materialise(parts_dir: str | Path) -> Path:
    """The merged checkpoint of a parts folder as an ordinary checkpoint folder (what
    ``from_pretrained`` loads in seconds), assembled on first use and cached."""
    parts_dir = Path(parts_dir)

    def write(scratch: Path) -> None:
        model, processor = assemble(parts_dir)
        model.save_pretrained(scratch)
        processor.save_pretrained(scratch)

    return _cached(cache_root() / f"{parts_dir.name}-{parts_digest(parts_dir)[:16]}", write)
