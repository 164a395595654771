"""Evaluation memory at Objaverse-LVIS scale: zero-shot + the four retrieval directions on stored embeddings.

The workload of ``clip-gs eval`` on LVIS: N = 46,000 objects, V = 36 views each, E = 1,024
(EVA02-E-14-plus), C = 1,156 classes. Embeddings are random unit vectors: shape and caption
``[N, E]`` float32, views ``[N, V, E]`` float16 (as the teacher's embeddings are stored). Each run
happens in a child process, which reports its peak resident memory (``ru_maxrss``) and wall time,
so the parent's own allocations never count. The goal: the whole evaluation within 8 GiB.

Side by side (``--check-objects``, default 600 objects): the chunked results against the
unchunked definition (one score matrix per direction, :func:`~clip_gs.evaluation.ranking.positive_ranks`),
which must be equal; and the unchunked path's peak memory at that size next to the chunked one.

Run: ``python benchmarks/bench_eval_memory.py [--objects 46000] [--views 36] [--dim 1024] [--threads 2]``
(the full size is about 3.2e14 flop of matrix products: tens of minutes on 2 cores); a quick look:
``--objects 4000``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import torch
import torch.nn.functional as F


def make(n: int, v: int, e: int, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    shape = F.normalize(torch.randn(n, e, generator=gen), dim=-1)
    text = F.normalize(shape + 0.8 * torch.randn(n, e, generator=gen), dim=-1)
    views = torch.empty(n, v, e, dtype=torch.float16)
    for start in range(0, n, 1024):  # built in pieces: never a float32 [N, V, E] copy
        stop = min(n, start + 1024)
        views[start:stop] = F.normalize(shape[start:stop, None] + 1.2 * torch.randn(stop - start, v, e, generator=gen), dim=-1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    weights = F.normalize(torch.randn(classes, e, generator=gen), dim=-1)
    return shape, text, views, labels, weights


def unchunked(shape, text, views):
    """The definition: one full score matrix per direction."""
    from clip_gs.evaluation.ranking import positive_ranks

    n, v, _ = views.shape
    g, t = F.normalize(shape, dim=-1), F.normalize(text, dim=-1)
    flat = F.normalize(views.float().reshape(n * v, -1), dim=-1)
    owner = torch.arange(n)
    view_owner = owner.repeat_interleave(v)
    eye = torch.eye(n, dtype=torch.bool)
    ranks = {
        "text_to_3d": positive_ranks(t @ g.T, eye),
        "3d_to_text": positive_ranks(g @ t.T, eye),
        "image_to_3d": positive_ranks(flat @ g.T, view_owner[:, None] == owner[None, :]),
        "3d_to_image": positive_ranks(g @ flat.T, owner[:, None] == view_owner[None, :]),
    }
    return {d: {f"r{k}": float((r < k).float().mean()) for k in (1, 5, 10)} for d, r in ranks.items()}


def child(args, out) -> None:
    torch.set_num_threads(args["threads"])
    from clip_gs.evaluation.metrics import retrieval, zero_shot

    shape, text, views, labels, weights = make(args["n"], args["v"], args["e"], args["classes"], args["seed"])
    names = [f"class{i:04d}" for i in range(args["classes"])]
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is in KiB on Linux)
    start = time.perf_counter()
    if args["mode"] == "chunked":
        zs = zero_shot(shape, [names[i] for i in labels.tolist()], names, weights)
        # the every-view definitions: every view a query and in the gallery, the heaviest of the definitions
        result = {"zeroshot_top1": zs.topk[1],
                  "retrieval": retrieval(shape, text, views, image_queries="every-view", image_gallery="any-view")}
    else:
        result = {"retrieval": unchunked(shape, text, views)}
    out.put(result | {"seconds": time.perf_counter() - start, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "inputs_gib": built})  # fmt: skip


def run(mode: str, n: int, v: int, e: int, classes: int, threads: int, seed: int = 0) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=child, args=({"mode": mode, "n": n, "v": v, "e": e, "classes": classes, "threads": threads,
                                            "seed": seed}, out))  # fmt: skip
    proc.start()
    result = out.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=46_000)
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1156)
    parser.add_argument("--check-objects", type=int, default=600, help="size of the side-by-side check (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import sys

    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from run import cpu_model  # benchmarks/run.py

    print(f"cpu: {cpu_model()}; torch {torch.__version__}; threads {args.threads}")
    results = {}
    if args.check_objects:
        small = {m: run(m, args.check_objects, args.views, args.dim, args.classes, args.threads) for m in ("chunked", "unchunked")}
        same = small["chunked"]["retrieval"] == small["unchunked"]["retrieval"]
        print(f"check at {args.check_objects} objects x {args.views} views: chunked == unchunked: {same}; peak "
              f"{small['chunked']['peak_gib']:.2f} GiB chunked, {small['unchunked']['peak_gib']:.2f} GiB unchunked")  # fmt: skip
        results["check"] = small | {"equal": same}
    big = run("chunked", args.objects, args.views, args.dim, args.classes, args.threads)
    stored = args.objects * args.dim * 4 * 2 + args.objects * args.views * args.dim * 2
    print(f"{args.objects} objects x {args.views} views x {args.dim}, {args.classes} classes: zero-shot + 4 retrieval "
          f"directions in {big['seconds']:.0f} s, peak RSS {big['peak_gib']:.2f} GiB (inputs {stored / 2**30:.2f} GiB; "
          f"after building them {big['inputs_gib']:.2f} GiB); goal <= 8 GiB: {'met' if big['peak_gib'] <= 8 else 'NOT met'}")  # fmt: skip
    results["full"] = big | {"objects": args.objects, "views": args.views, "dim": args.dim, "classes": args.classes}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
