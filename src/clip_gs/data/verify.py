"""``clip-gs verify``: re-read every record of a prepared dataset and list what is damaged."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from clip_gs.data.triplets import SPLITS


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
    sha256 and decoding it (:meth:`~clip_gs.data.triplets.TripletSample.from_record`), and each split's
    count against ``manifest.json``. A damaged record is listed and the check goes on.

    Raises:
        DatasetError: no readable manifest (nothing to verify against).
    """
    from tqdm.auto import tqdm

    from clip_gs.data.shards import TripletShardDataset, join, read_manifest

    root = str(root)
    manifest = read_manifest(root, storage_options)
    report = VerifyReport(root)
    for split in SPLITS:
        expected = manifest.counts.get(split, 0)
        if not expected:
            continue
        try:
            dataset = TripletShardDataset(join(root, split), storage_options=storage_options)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable index damages the whole split
            report.damaged.append({"split": split, "index": None, "error": type(exc).__name__, "message": str(exc)})
            continue
        if len(dataset) != expected:
            report.damaged.append({"split": split, "index": None, "error": "CountMismatch",
                                   "message": f"{len(dataset)} records, the manifest says {expected}"})  # fmt: skip
        for index in tqdm(range(len(dataset)), desc=f"verify {split}", unit="rec", disable=not progress):
            try:
                dataset[index]
            except Exception as exc:  # noqa: BLE001 - any failure to read a record is damage to report
                report.damaged.append(
                    {"split": split, "index": index, "error": type(exc).__name__, "message": str(exc)}
                )
        report.checked[split] = len(dataset)
    return report


__all__ = ["VerifyReport", "verify_dataset"]
