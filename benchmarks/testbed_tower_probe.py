"""Do the testbed tower's patch tokens name what they show? (issue 22)

    python benchmarks/testbed_tower_probe.py [--stage0 outputs/testbed-training/cls/final/heads.safetensors]
        [--scenes 30]

Reads the tower and the two heads that stage 0 of ``hired train-testbed`` trained (its ``final``
folder keeps them; the shipped parts do not) and scores them on training-split scenes that no
training run reaches (index 10^6 on), per density:

* patch accuracy: of the patches an object covers (a quarter of their pixels or more), the share
  whose patch head picks that object (one of 24 colour-shape pairs and 10 characters), and the
  share that at least gets its kind right (circle, square, triangle, cross or a character);
* CLS recall and precision: of the (tile, object) pairs, those the tile's CLS head says are there.

The question the testbed's answers hang on: a question about "the triangle" needs tokens that say
triangle; the CLS objective is what HiRED's attention ranking rests on.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file

from hired_ops import VisionGeometry, vision_tower
from pipeline.testbed.architecture import TowerSize, build_model
from pipeline.testbed.scenes import UNSEEN_TRAIN_INDEX, make_scene, render
from pipeline.testbed.train import SceneHeads
from pipeline.testbed.training_data import CLS_LABELS, PATCH_CLASSES, patch_targets, tile_targets


def kind_of(name: str) -> str:
    """``"red circle"`` -> ``"circle"``, ``"character 7"`` -> ``"character"``."""
    return name.split()[0] if name.startswith("character") else name.split()[-1]


def score(heads: SceneHeads, processor, geometry: VisionGeometry, density: str, scenes: int) -> dict[str, float]:
    """Patch and CLS scores over ``scenes`` unseen training scenes of one density."""
    kinds = torch.tensor([sorted({kind_of(n) for n in PATCH_CLASSES}).index(kind_of(n)) for n in PATCH_CLASSES])
    right = kind_right = covered = 0
    true_pos = predicted = present = 0
    for index in range(UNSEEN_TRAIN_INDEX, UNSEEN_TRAIN_INDEX + scenes):
        scene = make_scene("train", 0, index, density)
        pixels = processor.image_processor(images=[render(scene)], return_tensors="pt")["pixel_values"][0]
        with torch.no_grad():
            hidden = heads.hidden_states(pixels)
            patch_guess = heads.patches(hidden[:, 1:]).flatten(0, 1)[:, 1:].argmax(1) + 1
            cls_guess = heads.classifier(hidden[:, 0]) > 0
        truth = patch_targets(scene, geometry)
        shown = truth > 0
        right += (patch_guess == truth)[shown].sum().item()
        kind_right += (kinds[patch_guess] == kinds[truth])[shown].sum().item()
        covered += shown.sum().item()
        tiles = tile_targets(scene, geometry) > 0
        true_pos += (cls_guess & tiles).sum().item()
        predicted += cls_guess.sum().item()
        present += tiles.sum().item()
    return {
        "patch_accuracy": right / covered,
        "patch_kind_accuracy": kind_right / covered,
        "covered_patches": covered,
        "cls_recall": true_pos / present,
        "cls_precision": true_pos / max(predicted, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage0", default="outputs/testbed-training/cls/final/heads.safetensors")
    parser.add_argument("--scenes", type=int, default=30, help="scenes per density")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = build_model(TowerSize(), 0)
    geometry = VisionGeometry.from_model(model)
    heads = SceneHeads(vision_tower(model), geometry.layers_to_run, len(CLS_LABELS), len(PATCH_CLASSES))
    loaded = heads.load_state_dict(load_file(args.stage0), strict=False)
    missing = set(loaded.missing_keys) & {name for name, _ in heads.named_parameters()}
    if missing or loaded.unexpected_keys:
        raise SystemExit(f"{args.stage0} is not a stage-0 file of this tower: missing {sorted(missing)[:3]}, "
                         f"unexpected {loaded.unexpected_keys[:3]}")
    for density in ("standard", "dense"):
        s = score(heads, processor, geometry, density, args.scenes)
        print(f"{density}: patch accuracy {s['patch_accuracy']:.3f} (kind {s['patch_kind_accuracy']:.3f}) over "
              f"{s['covered_patches']} covered patches; CLS recall {s['cls_recall']:.3f}, precision {s['cls_precision']:.3f}")


if __name__ == "__main__":
    main()
