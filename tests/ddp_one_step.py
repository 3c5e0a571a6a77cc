"""Worker for tests/test_distributed.py: one optimiser step per balancer, state dumped per rank.

Run as `python tests/ddp_one_step.py DATA OUT` (one process) or under
`torchrun --nproc-per-node 2 tests/ddp_one_step.py DATA OUT` (gloo on the CPU). For each balancer it
trains exactly one step of the global batch (all training images) with SyncBatchNorm, SGD and no
clipping, and saves the model, the balancer's weights and state, and the step's global losses to
OUT/<balancer>.rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from medmtl.distributed import cleanup
from medmtl.engine.loop import train_one_epoch
from medmtl.engine.trainer import Trainer
from medmtl.methods import build_config

BALANCERS = ("fixed", "gradnorm", "pcgrad", "uncertainty", "dwa", "cagrad", "famo")


def main(data: str, out: str) -> None:
    torch.set_num_threads(int(os.environ.get("MEDMTL_TEST_THREADS", "1")))  # see conftest.py
    comm = None
    for name in BALANCERS:
        cfg = build_config(name, {
            "data": data, "out": f"{out}/{name}-run", "epochs": 1, "imgsz": 64, "batch": 8,
            "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "warmup_epochs": 0.0,
            "clip_grad": 0.0, "workers": 0, "ema": False, "diag_steps": 1, "sync_bn": True,
        })
        t = Trainer(cfg, progress=False)
        comm = t.comm
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        row = train_one_epoch(t)
        assert t.state.step_in_epoch == 1, t.state.step_in_epoch
        torch.save({"model": t.model.state_dict(), "before": before, "weights": t.balancer.weights(),
                    "balancer": t.balancer.state_dict(), "row": row,
                    "world_size": comm.world_size},
                   Path(out) / f"{name}.rank{comm.rank}.pt")
    if comm is not None:
        cleanup(comm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
