"""Evaluate a CLIP-GS model from Python: zero-shot, few-shot and retrieval on a prepared split.

    python examples/evaluate.py MODEL_DIR_OR_REPO DATASET_DIR [SPLIT]   # e.g. runs/quickstart/export and
                                                                       # the folder clip-gs prepare wrote
    python examples/evaluate.py                                        # the metric functions on toy embeddings

The same as ``clip-gs eval --model M --data D --split test --out eval-out``, step by step.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from clip_gs import CLIPGS
from clip_gs.evaluation import (
    PreparedSplit,
    embed,
    evaluate,
    few_shot,
    retrieval,
    standard_few_shot,
    write_outputs,
    zero_shot,
)


def toy() -> None:
    """The protocol functions on plain tensors: 4 classes of noisy embeddings around class vectors."""
    g = torch.Generator().manual_seed(0)
    classes = ["cube", "sphere", "torus", "cone"]
    class_vectors = F.normalize(torch.randn(4, 64, generator=g), dim=-1)
    labels = [classes[i % 4] for i in range(80)]
    shapes = F.normalize(class_vectors[[i % 4 for i in range(80)]] + 0.15 * torch.randn(80, 64, generator=g), dim=-1)
    captions = F.normalize(shapes + 0.15 * torch.randn(80, 64, generator=g), dim=-1)
    views = F.normalize(shapes[:, None] + 0.2 * torch.randn(80, 3, 64, generator=g), dim=-1)  # 3 views each

    zs = zero_shot(shapes, labels, classes, class_vectors)
    print(f"zero-shot top-1 {zs.topk[1]:.3f}, per class {zs.per_class}")
    print("confusion (rows: true):\n", zs.confusion)
    fs = few_shot(shapes, labels, ways=4, shots=2, episodes=20, queries_per_class=5, seed=0)
    print(f"few-shot {fs.name}: {fs.mean:.3f} +- {fs.std:.3f} over {fs.episodes} episodes of one split")
    # the standard protocol: support from a train split, 20 test queries per class, 10 seeded runs
    train = F.normalize(class_vectors[[i % 4 for i in range(40)]] + 0.15 * torch.randn(40, 64, generator=g), dim=-1)
    std = standard_few_shot(train, [classes[i % 4] for i in range(40)], shapes, labels, ways=4, shots=5)
    print(std.describe())
    for direction, recalls in retrieval(shapes, captions, views).items():
        print(f"{direction:<12} " + "  ".join(f"{k} {v:.3f}" for k, v in recalls.items()))


def on_dataset(model_ref: str, root: str, split: str) -> None:
    model = CLIPGS.from_pretrained(model_ref)  # a folder or a Hub repo id
    source = PreparedSplit(root, split)  # a benchmark's layout would be BenchmarkSplit(name, folder)
    data = embed(model, source)  # the model's fused encode path; stored teacher embeddings
    print(f"{len(data)} objects, shape embeddings {tuple(data.shape.shape)}, views {tuple(data.images.shape)}")
    print("retrieval:", retrieval(data.shape, data.text, data.images, data.text_mask, data.image_mask))

    # everything at once, as clip-gs eval does (embeds again; protocols that cannot run are listed in failures)
    # few-shot: the standard protocol (support from the train split; the largest standard setting that fits runs)
    result = evaluate(model, source, model_name=model_ref)
    print("zero-shot:", result.report["tasks"].get("zeroshot", {}).get("top1"), "failures:", result.failures)
    written = write_outputs(result, "eval-out")
    print("wrote", ", ".join(str(p) for p in written.values()))


if __name__ == "__main__":
    if len(sys.argv) == 1:
        toy()
    else:
        on_dataset(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "test")
