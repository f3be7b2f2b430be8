"""Does the testbed model read the image? (issue 22)

    python benchmarks/testbed_reads_image.py [--model hired/testbed-llava-next] [--scenes 12]
        [--split heldout|train] [--turns questions|caption]

Two measurements, fp32:

* answer loss: the mean cross-entropy of the answer tokens of conversations about each scene
  (``questions``: 3 VQA, 3 multiple-choice and 3 POPE questions, as stage 2 trains on;
  ``caption``: the caption alone, as stage 1 trains on), once with the scene's own image and once
  with a blank image of the same size, filled with the colour of its top-left pixel (the
  background; in a dense scene, one of its stripes' colours). A model that reads the
  image scores lower with it; equal losses mean it answers from priors alone.
* scale: the L2 norm of the projected visual tokens against that of the LLM's text embeddings,
  and how alike the visual tokens are (mean cosine to their own mean).

``--split heldout`` reports on the held-out scenes; ``--split train`` uses training-split scenes
no training run reaches (index 10^6 on), the split to develop the training against.
"""

from __future__ import annotations

import argparse
import random

import torch
from PIL import Image

from pipeline.model.loading import load_model
from pipeline.testbed import questions as q
from pipeline.testbed.scenes import UNSEEN_TRAIN_INDEX, make_scene, render
from pipeline.testbed.training_data import collate, encode_conversation


def answer_loss(model, processor, item: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Summed cross-entropy over the labelled tokens of one encoded conversation, and their count."""
    batch = collate([item], processor.tokenizer.pad_token_id)
    labels = batch.pop("labels")[0, 1:]
    with torch.no_grad():
        logits = model(**batch).logits[0, :-1]
    keep = labels != -100
    loss = torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
    return loss.item(), int(keep.sum())


def visual_scale(model, processor, image: Image.Image) -> dict[str, float]:
    """Norms of the projected visual tokens ``(T, D)`` of ``image`` beside the text embeddings'."""
    inputs = processor(images=[image], text=["<image>\n"], return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        tokens = torch.cat([f.reshape(-1, f.shape[-1]) for f in getattr(features, "pooler_output", features)])
        text = model.get_input_embeddings().weight.norm(dim=-1)
    similarity = torch.nn.functional.cosine_similarity(tokens, tokens.mean(0, keepdim=True))
    return {
        "visual_norm": tokens.norm(dim=-1).mean().item(),
        "text_norm": text.mean().item(),
        "visual_cosine_to_mean": similarity.mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hired/testbed-llava-next")
    parser.add_argument("--scenes", type=int, default=12, help="scenes per density")
    parser.add_argument("--split", choices=["heldout", "train"], default="heldout")
    parser.add_argument("--turns", choices=["questions", "caption"], default="questions")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = load_model(args.model, device="cpu", dtype="float32")
    first = UNSEEN_TRAIN_INDEX if args.split == "train" else 0
    for density in ("standard", "dense"):
        sums = {"image": [0.0, 0], "blank": [0.0, 0]}
        for index in range(first, first + args.scenes):
            scene = make_scene(args.split, 0, index, density)
            if args.turns == "caption":
                turns = [q.describe(scene)]
            else:
                turns = q.training_questions(scene, random.Random(index), 3, with_caption=False)
            image = render(scene)
            blank = Image.new("RGB", image.size, image.getpixel((0, 0)))
            for name, shown in (("image", image), ("blank", blank)):
                loss, count = answer_loss(model, processor, encode_conversation(processor, shown, turns))
                sums[name][0] += loss
                sums[name][1] += count
        image_loss, blank_loss = (sums[k][0] / sums[k][1] for k in ("image", "blank"))
        print(f"{density}: answer loss with the image {image_loss:.4f}, with a blank image {blank_loss:.4f} "
              f"(blank - image {blank_loss - image_loss:+.4f}; {sums['image'][1]} answer tokens)")
    scale = visual_scale(model, processor, render(make_scene(args.split, 0, first, "standard")))
    print(f"visual tokens: mean norm {scale['visual_norm']:.2f} against {scale['text_norm']:.2f} for text embeddings "
          f"({scale['visual_norm'] / scale['text_norm']:.1f}x); mean cosine to their mean {scale['visual_cosine_to_mean']:.3f}")


if __name__ == "__main__":
    main()
