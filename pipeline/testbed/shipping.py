"""What the repository ships of the trained testbed: only what training made.

``pipeline/testbed/weights/`` holds the tower, the newline embedding and the image token's rows
(``testbed.safetensors``), the LoRA adapter with the trained projector (``adapter/``, the ``peft``
format), the model and generation configs, the processor's image settings and chat template, and
``hired_parts.json``, which names the base LLM package. :mod:`pipeline.model.assembled` puts the
merged model back together from them when ``hired/testbed-llava-next`` is loaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.model.assembled import ADAPTER_DIR, PARTS_FILE, WEIGHTS_FILE
from pipeline.model.base_llm import SMOLLM2

from .architecture import IMAGE_TOKEN

# the tokenizer comes from the base package at load time; only the processor's own files ship
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def export(peft_model, processor, out: Path) -> dict[str, float]:
    """Write the shipped parts of a trained ``PeftModel`` (LLaVA-NeXT inside) to ``out``, replacing
    what was there; returns the parameter counts written and their bytes."""
    from safetensors.torch import save_file

    model = peft_model.get_base_model()
    added = [IMAGE_TOKEN]
    base_vocab = len(processor.tokenizer) - len(added)
    embeddings = model.get_input_embeddings().weight
    weights = {f"model.vision_tower.{k}": v for k, v in model.model.vision_tower.state_dict().items()}
    weights["model.image_newline"] = model.model.image_newline
    weights["added_embeddings"] = embeddings[base_vocab:]
    weights = {k: v.detach().to(torch.float32).contiguous() for k, v in weights.items()}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file(weights, out / WEIGHTS_FILE)
    # the base is what hired_parts.json names. A model trained further (--init-from) carries its
    # parts folder's path on this machine as its name, and peft writes that as the adapter's base
    # (set when the adapter was loaded, and again from the model's name when it is saved)
    model.name_or_path = ""
    for adapter in peft_model.peft_config.values():
        adapter.base_model_name_or_path = None
    peft_model.save_pretrained(out / ADAPTER_DIR)
    (out / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    with tempfile.TemporaryDirectory() as scratch:
        processor.save_pretrained(scratch)
        for path in Path(scratch).iterdir():
            if path.name not in TOKENIZER_FILES:
                shutil.copy(path, out / path.name)
    parts = {"base": asdict(SMOLLM2), "added_tokens": added, "base_vocab_size": base_vocab}
    (out / PARTS_FILE).write_text(json.dumps(parts, indent=2) + "\n")
    adapter = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad)
    return {
        "shipped_params": float(sum(v.numel() for v in weights.values()) + adapter),
        "shipped_bytes": float(sum(f.stat().st_size for f in out.rglob("*") if f.is_file())),
    }
