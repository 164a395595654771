"""Resume and listing time of prepare's work folder at 10K, 30K and 100K records: the fanned-out layout
(256 folders by key prefix) next to a flat folder of the same files (the reference).

Per size and layout, in a fresh temporary folder: N small records are written (a ``.blob`` and a
``.json`` each, as prepare writes them), then timed:

- ``resume``: what a rerun does before any work, :func:`clip_gs.data.work_folder.finished_meta` for
  every object (a stat, a read and a check per record);
- ``listing``: every file of the folder walked (``os.walk``), as clearing it does.

Printed: seconds and microseconds per record for each; growth no faster than linear shows as a flat
us/record column. Run: ``python benchmarks/bench_work_folder.py [--sizes 10000 30000 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

from clip_gs.data import work_folder
from clip_gs.data.ownership import check_clearable
from clip_gs.data.object_work import input_fingerprint
from clip_gs.data.sources import SourceItem
from clip_gs.data.work_folder import finished_meta, record_key


def flat_record_path(work: Path, item_id: str, suffix: str) -> Path:
    """The reference: every record in the work folder itself."""
    return work / f"{record_key(item_id)}{suffix}"


def write_records(work: Path, items: list[SourceItem]) -> None:
    for item in items:
        blob = work_folder.record_path(work, item.id, ".blob")
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(b"x" * 64)
        meta = {"id": item.id, "sha256": "0" * 64, "split": "train", "label": None, "input": input_fingerprint(item)}
        work_folder.record_path(work, item.id, ".json").write_text(json.dumps(meta))


def measure(size: int, layout: str) -> dict:
    items = [SourceItem(f"synthetic-{i:06d}", f"synthetic:{i}") for i in range(size)]
    patch = mock.patch.object(work_folder, "record_path", flat_record_path) if layout == "flat" else mock.patch.object(
        work_folder, "record_path", work_folder.record_path)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, patch:
        work = Path(tmp) / "work"
        work.mkdir()
        write_records(work, items)
        start = time.perf_counter()
        found = sum(finished_meta(work, item) is not None for item in items)
        resume = time.perf_counter() - start
        assert found == size
        start = time.perf_counter()
        listed = sum(len(files) for _, _, files in os.walk(work))
        listing = time.perf_counter() - start
        assert listed == 2 * size
        if layout == "fanned":
            check_clearable(work, "work")  # the layout prepare clears is this one
    return {"size": size, "layout": layout, "resume_s": resume, "listing_s": listing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    args = parser.parse_args()
    print(f"{'records':>8} {'layout':>7} {'resume s':>9} {'us/rec':>7} {'listing s':>10} {'us/rec':>7}")
    for size in args.sizes:
        for layout in ("fanned", "flat"):
            row = measure(size, layout)
            print(f"{size:>8,} {layout:>7} {row['resume_s']:>9.2f} {1e6 * row['resume_s'] / size:>7.1f} "
                  f"{row['listing_s']:>10.2f} {1e6 * row['listing_s'] / size:>7.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
