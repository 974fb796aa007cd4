# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Wall time per evaluated item (a volume, an image), from loading to the end of post-processing."""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfuse_monai.handlers.metrics_report import item_name
from transfuse_monai.utils import atomic_path, atomic_write_json
from transfuse_monai.utils.distributed import gather_per_rank, interleave_ranks, is_main_process

__all__ = ["SecondsPerVolume"]

logger = logging.getLogger(__name__)


class SecondsPerVolume:
    """Evaluator handler timing every volume from the moment its batch is requested (loading and pre-processing)
    to the end of post-processing (network, inversion to the input's grid, argmax, writing), and writing
    ``<output_dir>/<prefix>per_volume.csv`` and ``<output_dir>/<prefix>summary.json``.

    Attach it before the metric handlers: ignite runs the ``ITERATION_COMPLETED`` handlers in the order they were
    attached and MONAI's post-processing runs inside the iteration, so the time then excludes the metrics. With
    ``num_workers > 0`` the data loader prepares volumes in the background, and the figure measures the pipeline's
    throughput rather than one volume's latency; ``num_workers=0`` times everything in sequence. On CUDA the device
    is synchronised before each reading.

    The summary holds the mean, median, standard deviation and minimum over the volumes, the mean without the first
    volume (warm-up: memory allocation, cuDNN autotuning), the number of volumes and, with ``network``, its number
    of parameters. The means are also stored in ``engine.state.metrics`` (``seconds_per_volume``).

    In a distributed run (``torchrun``, each rank timing its share of a non-shuffled
    :class:`~monai.data.DistributedSampler`) the rows of all ranks are gathered in the dataset order, the summary is
    over every volume (``processes`` says how many ran side by side, each with its own warm-up volume, all of which
    ``mean_without_first`` leaves out) and only rank 0 writes and prints. Every rank must attach the handler (the
    gather is a collective operation).

    Args:
        output_dir: folder of the files.
        network: the network, to report its parameter count.
        prefix: file name prefix.
        name_key: batch key of a volume's name (else its image file name).
        image_key: batch key of the image.
        print_summary: print one line with the mean at the end of the run.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module | None = None,
        prefix: str = "seconds_",
        name_key: str = "name",
        image_key: str = "image",
        print_summary: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.prefix = prefix
        self.name_key = name_key
        self.image_key = image_key
        self.print_summary = print_summary
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._start: float | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.stop)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine=None) -> None:
        self.rows, self.summary, self._start = [], {}, None

    @staticmethod
    def _sync(engine) -> None:
        device = getattr(getattr(engine, "state", None), "device", None)
        if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
            torch.cuda.synchronize()

    def start(self, engine) -> None:
        self._sync(engine)
        self._start = time.perf_counter()

    def stop(self, engine) -> None:
        if self._start is None:
            return
        self._sync(engine)
        elapsed = time.perf_counter() - self._start
        self._start = None
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, Mapping):
            batch, output = [batch], [output]
        n = max(len(output), 1)
        for b, o in zip(batch, output):
            self.rows.append({"name": item_name(b, o, self.name_key, self.image_key), "seconds": elapsed / n})

    def write(self, engine=None) -> dict[str, Any]:
        per_rank = gather_per_rank(self.rows)
        self.rows = interleave_ranks(per_rank)
        if not self.rows:
            if is_main_process():
                logger.warning("SecondsPerVolume: no volume was timed.")
            return {}
        seconds = np.asarray([r["seconds"] for r in self.rows], dtype=np.float64)
        warm = np.asarray([r["seconds"] for rows in per_rank for r in rows[1:]], dtype=np.float64)
        self.summary = {
            "n": int(seconds.size),
            "seconds_per_volume": float(seconds.mean()),
            "median": float(np.median(seconds)),
            "std": float(seconds.std()),
            "min": float(seconds.min()),
            "mean_without_first": float(warm.mean()) if warm.size else float(seconds.mean()),
            "processes": len(per_rank),
            "device": str(getattr(getattr(engine, "state", None), "device", "")),
        }
        if self.network is not None:
            module = getattr(self.network, "module", self.network)  # DistributedDataParallel
            self.summary["parameters"] = int(sum(p.numel() for p in module.parameters()))
        if engine is not None and hasattr(engine, "state"):
            engine.state.metrics["seconds_per_volume"] = self.summary["seconds_per_volume"]
        if not is_main_process():
            return self.summary
        with atomic_path(self.output_dir / f"{self.prefix}per_volume.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["name", "seconds"])
                writer.writeheader()
                writer.writerows(self.rows)
        atomic_write_json(self.output_dir / f"{self.prefix}summary.json", self.summary)
        if self.print_summary:
            print(
                f"seconds per volume: {self.summary['seconds_per_volume']:.3f} mean, {self.summary['median']:.3f} "
                f"median over {self.summary['n']} volume(s) (loading, pre-processing, network, inversion)",
                flush=True,
            )
        return self.summary


# ------------------------------------------------------------------------------------------------------ folds table
