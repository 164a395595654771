"""``clip-gs verify``: re-read every record of a prepared dataset and list what is damaged."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from clip_gs.data.triplets import SPLITS
from clip_gs.errors import DatasetError


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found.

    Attributes:
        root: the dataset.
        checked: records read per split.
        damaged: one entry per damaged record or split: ``split``, ``index`` (None for a split-level
            problem), ``error`` (type) and ``message``.
    """

    root: str
    checked: dict[str, int] = field(default_factory=dict)
    damaged: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def line(self) -> str:
        total = sum(self.checked.values())
        counts = ", ".join(f"{k} {v}" for k, v in self.checked.items())
        state = "all intact" if self.ok else f"{len(self.damaged)} damaged"
        return f"verified {total} records of {self.root} ({counts}): {state}"


def verify_dataset(
    root: str | os.PathLike, storage_options: dict | None = None, progress: bool = False
) -> VerifyReport:
    """Read every record of every split of ``root`` (a folder or ``s3://`` prefix), checking each one's
    sha256 and decoding it (:meth:`~clip_gs.data.triplets.TripletSample.from_record`), each split's
    count against ``manifest.json``, and that no id appears twice in a split. A damaged record is
    listed and the check goes on.

    A split is opened like every reader opens one (:func:`~clip_gs.data.shards.read_split_index`):
    an ``index.json`` that is not what clip-gs writes (another data format such as pickle, a chunk
    outside the split, a count that cannot fit its chunk) damages the whole split, and none of its
    bytes are read. Only the package's errors (:class:`~clip_gs.errors.DatasetError`) and I/O errors
    are reported as damage; anything else is a bug and propagates.

    Raises:
        DatasetError: no readable manifest (nothing to verify against).
    """
    from tqdm.auto import tqdm

    from clip_gs.data.shards import TripletShardDataset, read_manifest
    from clip_gs.storage import join

    root = str(root)
    manifest = read_manifest(root, storage_options)
    report = VerifyReport(root)
    for split in SPLITS:
        expected = manifest.counts.get(split, 0)
        if not expected:
            continue
        try:
            dataset = TripletShardDataset(join(root, split), storage_options=storage_options)
        except (DatasetError, OSError) as exc:  # a missing or invalid index damages the whole split
            report.damaged.append({"split": split, "index": None, "error": type(exc).__name__, "message": str(exc)})
            continue
        if len(dataset) != expected:
            report.damaged.append({"split": split, "index": None, "error": "CountMismatch",
                                   "message": f"{len(dataset)} records, the manifest says {expected}"})  # fmt: skip
        seen: dict[str, int] = {}
        for index in tqdm(range(len(dataset)), desc=f"verify {split}", unit="rec", disable=not progress):
            try:
                sample_id = dataset[index].id
            except (DatasetError, OSError) as exc:  # a record that cannot be read or decoded
                report.damaged.append(
                    {"split": split, "index": index, "error": type(exc).__name__, "message": str(exc)}
                )
                continue
            if sample_id in seen:
                report.damaged.append({"split": split, "index": index, "error": "DuplicateId",
                                       "message": f"id {sample_id!r} is also record {seen[sample_id]}"})  # fmt: skip
            seen.setdefault(sample_id, index)
        report.checked[split] = len(dataset)
    return report


__all__ = ["VerifyReport", "verify_dataset"]
