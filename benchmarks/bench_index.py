"""EmbeddingIndex search latency at 100K and 1M entries of 1024-d, next to a one-shot brute force.

Rows:
- ``EmbeddingIndex.search``: chunked exact search (memory bounded by the chunk's scores);
- ``brute force``: ``torch.topk(queries @ E.T)`` over the whole matrix at once (the reference:
  the same result, scores for every row held at once).

Each figure is the median of ``--repeats`` calls after one warm-up, for 1 and 16 queries, k=10.

Run: ``python benchmarks/bench_index.py [--sizes 100000 1000000] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from clip_gs.index import EmbeddingIndex


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"threads={torch.get_num_threads()}, dim={args.dim}, k=10")
    print(f"{'entries':>10} {'queries':>7} {'index ms':>9} {'brute ms':>9} {'ratio':>6}")
    for size in args.sizes:
        index = EmbeddingIndex(args.dim)
        rows = F.normalize(torch.randn(size, args.dim, generator=generator), dim=-1)
        index.add([str(i) for i in range(size)], rows)
        for count in (1, 16):
            queries = F.normalize(torch.randn(count, args.dim, generator=generator), dim=-1)
            ours = timed(lambda: index.search(queries, k=10), args.repeats)
            brute = timed(lambda: torch.topk(queries @ index.embeddings.T, 10, dim=1), args.repeats)
            same = [[h.row for h in q] for q in index.search(queries, k=10)] == torch.topk(
                queries @ index.embeddings.T, 10, dim=1
            ).indices.tolist()
            print(
                f"{size:>10,} {count:>7} {ours * 1e3:>9.1f} {brute * 1e3:>9.1f} {brute / ours:>5.2f}x  same hits: {same}"
            )


if __name__ == "__main__":
    main()
