"""``prepare`` on Ray Data: the per-object stages as a streaming pipeline on one machine or a cluster
(the ``scale`` extra: ``pip install clip-gs[scale]``).

The stages of :mod:`clip_gs.data.object_work` become Ray Data operators:

- on the CPU (``device="cpu"``): one operator, a pool of ``workers`` actors, each running both stages
  of an object (its teacher loaded once per actor; with fitted meshes, its own resident Blender);
- on CUDA: ``load`` (reading, Blender renders) on a pool of ``workers`` CPU actors, feeding
  ``finish`` (fits, orbit renders, the teacher) on one actor per GPU, so that the GPUs fit while the
  CPUs render.

Results stream back to the driver, the one process that writes the work folder
(:class:`~clip_gs.data.work_folder.RecordWriter`); the shards are written from it afterwards, as for
a single process. Records are a deterministic function of each object
(:mod:`clip_gs.data.object_work`), so the dataset is the same byte for byte whatever the number of
workers or machines. A worker that dies is replaced and its objects are done again (Ray retries);
nothing is written for an object until its whole result is back.

One machine: ``workers=N`` starts a local Ray with N CPUs. A cluster: ``address="HOST:PORT"`` (or
``"auto"``) joins a running one (``ray start --head`` on one node, ``ray start --address HOST:PORT``
on the others, with the cluster's token, ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``, in every
environment, this one included); every node needs clip-gs installed and the source folder at the same
path.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence

import torch

from clip_gs.data.object_work import ObjectPreparer, ObjectResult, item_from_json, item_to_json
from clip_gs.data.sources import SourceItem
from clip_gs.data.work_folder import RecordWriter
from clip_gs.errors import ClipGSError, DatasetError, MissingDependencyError

OBJECT_STORE_BYTES = 512 * 1024 * 1024
"""Object store of a local Ray started here (512 MiB: results stream to the driver as they finish)."""


def _ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError(
            f"prepare on several workers or a cluster runs on Ray Data: pip install clip-gs[scale] ({exc})"
        ) from exc
    return ray


def _result_row(result: ObjectResult) -> dict:
    import json

    return {"id": result.id, "meta": json.dumps(result.meta) if result.meta is not None else "",
            "blob": result.blob or b"", "failure": json.dumps(result.failure) if result.failure is not None else ""}  # fmt: skip


def _row_result(row: dict) -> ObjectResult:
    import json

    return ObjectResult(row["id"], meta=json.loads(row["meta"]) if row["meta"] else None,
                        blob=bytes(row["blob"]) if row["meta"] else None,
                        failure=json.loads(row["failure"]) if row["failure"] else None)  # fmt: skip


class _Both:
    """A CPU actor: both stages of each object."""

    def __init__(self, preparer: ObjectPreparer) -> None:
        self.preparer = preparer

    def __call__(self, row: dict) -> dict:
        return _result_row(self.preparer(item_from_json(row["item"])))


class _Load:
    """A CPU actor: stage 1 (reading, Blender renders). Its output never leaves the pipeline."""

    def __init__(self, preparer: ObjectPreparer) -> None:
        self.preparer = preparer

    def __call__(self, row: dict) -> dict:
        loaded = self.preparer.load(item_from_json(row["item"]))
        # the pipeline's own intermediate, pickled as Ray pickles any task argument
        return {"item": row["item"], "loaded": pickle.dumps(loaded)}


class _Finish:
    """A GPU actor: stage 2 (fit or orbit renders, the teacher loaded once, the record)."""

    def __init__(self, preparer: ObjectPreparer) -> None:
        self.preparer = preparer

    def __call__(self, row: dict) -> dict:
        item, loaded = item_from_json(row["item"]), pickle.loads(row["loaded"])
        return _result_row(loaded if isinstance(loaded, ObjectResult) else self.preparer.finish(item, loaded))


def run_pipeline(preparer: ObjectPreparer, items: Sequence[SourceItem], writer: RecordWriter, workers: int | None = None,
                 address: str | None = None, progress: bool = True) -> None:  # fmt: skip
    """Prepare ``items`` on Ray Data and file every result with ``writer``.

    Args:
        preparer: the per-object work (pickled into each actor; a teacher given as a spec string is
            loaded once per actor).
        items: the objects to do.
        writer: the work folder's writer, on this process.
        workers: CPU actors (default: the CPUs of the cluster, or of this machine). Without ``address``,
            a local Ray of ``workers`` CPUs is started and stopped here.
        address: a running cluster (``HOST:PORT`` or ``auto``) to join; None: a new local one (never a
            cluster that ``ray start`` left running on this machine, nor ``RAY_ADDRESS``).
        progress: a progress bar of finished objects.

    Raises:
        MissingDependencyError: Ray is not installed (the ``scale`` extra).
        DatasetError: a fault that recurs for every object (see :class:`RecordWriter`), or the pipeline
            failed (its message).
    """
    from tqdm.auto import tqdm

    ray = _ray()
    started = not ray.is_initialized()
    if started:
        options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                   "configure_logging": False}  # fmt: skip
        if address is None:  # a Ray of its own, even beside a cluster that `ray start` left running here
            ray.init(address="local", num_cpus=workers, object_store_memory=OBJECT_STORE_BYTES, **options)
        else:
            ray.init(address=address, **options)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its own bars and execution notes: ours say it
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        resources = ray.cluster_resources()
        cpus = int(workers or resources.get("CPU", 1))
        dataset = ray.data.from_items([{"item": item_to_json(item)} for item in items],
                                      override_num_blocks=max(1, len(items)))  # fmt: skip
        pool = ray.data.ActorPoolStrategy
        if torch.device(preparer.device).type == "cuda":
            gpus = int(resources.get("GPU", 0))
            if gpus < 1:
                raise DatasetError(f"device {preparer.device}: the Ray cluster has no GPU")
            dataset = dataset.map(_Load, fn_constructor_kwargs={"preparer": preparer}, compute=pool(size=cpus),
                                  num_cpus=1)  # fmt: skip
            dataset = dataset.map(_Finish, fn_constructor_kwargs={"preparer": preparer}, compute=pool(size=gpus),
                                  num_gpus=1, num_cpus=0)  # fmt: skip
        else:
            dataset = dataset.map(_Both, fn_constructor_kwargs={"preparer": preparer}, compute=pool(size=cpus),
                                  num_cpus=1)  # fmt: skip
        bar = tqdm(total=len(items), desc="prepare: load, render, embed (Ray)", unit="obj", disable=not progress)
        try:
            for row in dataset.iter_rows():
                if not writer.write(_row_result(row)):
                    bar.set_postfix(failed=writer.failed)
                bar.update()
        except ClipGSError:
            raise
        except Exception as exc:  # Ray wraps a worker's exception; its last line says what happened
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ClipGSError):
                raise cause from exc
            text = str(exc).strip().splitlines()
            raise DatasetError(f"the prepare pipeline stopped: {text[-1] if text else type(exc).__name__}") from exc
        finally:
            bar.close()
            writer.sync()
    finally:
        if started:
            ray.shutdown()


__all__ = ["OBJECT_STORE_BYTES", "run_pipeline"]
