"""`kobench finetune` under `accelerate launch` (DDP for LoRA/QLoRA, FSDP for LoRA): the rank's device, which process
writes, and the few points where the ranks wait for each other.

The Trainer does the distributed training itself; this module only keeps the recipe's own side effects (the output
folder, the random-weights and embedded-model caches, the loss log, the adapter files) to one writer, rank 0, and
hands the other ranks what rank 0 decided. In a plain process every method is a no-op.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class Group:
    """The launched process group this process belongs to, or a group of one."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.state: Any = None
        if self.world_size > 1:
            import torch
            from accelerate import PartialState

            # joins the process group accelerate launch set up: NCCL, or gloo on CPUs (which accelerate joins only
            # when told it is on CPUs)
            cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" or not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        """Launched with an FSDP accelerate config: the Trainer shards and places the model itself."""
        return self.world_size > 1 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"

    @property
    def kind(self) -> str | None:
        """How the launched group trains (recorded with the adapter): fsdp, ddp, or None for one process."""
        return None if self.world_size <= 1 else ("fsdp" if self.fsdp else "ddp")

    def device(self, device: str) -> str:
        """Each launched process trains on its own GPU: cuda becomes cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if self.world_size > 1 and device == "cuda" else device

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills a cache); the others run it after, and find the cache filled."""
        if self.state is None:
            yield
            return
        with self.state.main_process_first():
            yield

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def share(self, value: T) -> T:
        """Rank 0's value, on every rank (e.g. the output folder rank 0 named and created)."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]
