"""Data parallelism across processes: `torchrun` + DistributedDataParallel.

`medmtl train --devices N ...` (or `torchrun --nproc-per-node N -m medmtl train ...`) starts N
processes; each one trains on its slice of every *global* batch (`--batch` is the global batch, split
evenly over the ranks) and the gradients are averaged. What makes this exactly the single-process
run with the same global batch (up to float rounding; tested with gloo on the CPU):

* **Loss normalisers are global.** The detection loss is a mean over the labelled images of the
  global batch and the view loss a weighted mean over its labelled views; each rank divides its
  local sum by (global normaliser / world size), so the average over ranks is the global loss.
* **Balancers see global quantities.** Every value a balancer reads from a loss or a gradient is
  averaged over the ranks first (`Comm.mean`): GradNorm's loss ratios and gradient norms, FAMO's
  losses, DWA's epoch losses, and the per-task gradients that PCGrad and CAGrad project (each task's
  gradient is all-reduced *before* the surgery). Their inputs being equal on every rank, the task
  weights are too; the trainer checks this once per epoch (`ddp/weight_spread` in history.csv).
* **Which tasks are in a batch** (partial labels) is decided globally, so every rank runs the same
  backward passes and collectives.
* **BatchNorm** statistics are per rank unless `--sync-bn`: then they are the global batch's
  (timm's SyncBatchNorm on CUDA, keeping its fused activations; on the CPU a gloo-capable version
  written here, whose statistics are all-reduced through a differentiable all-reduce).

Single-pass balancers (fixed, uncertainty, dwa, famo) let DDP's reducer average gradients during
the backward (communication overlapped with compute). Balancers that back-propagate in several
passes (pcgrad and cagrad, one per task; gradnorm, whose fast path writes the heads' gradients
itself) set `multi_backward`: the model then runs under `no_sync()` and the trainer averages all
gradients once, just before the optimiser step.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Comm:
    """The process group as the trainer, the losses and the balancers see it.

    With one process (`LOCAL`) every method is the identity, so single-process code pays nothing.
    Tensor collectives run on the training backend (NCCL on GPUs: no host sync); small control
    values (`flags`) and Python objects go through a gloo group on the CPU.
    """

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0,
                 ctrl_group: Any = None) -> None:
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank
        self.ctrl_group = ctrl_group

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, t: Tensor) -> Tensor:
        """Sum over ranks (a new tensor; not differentiable)."""
        if not self.active:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def mean(self, t: Tensor) -> Tensor:
        """Average over ranks (a new tensor; not differentiable)."""
        return self.sum(t) / self.world_size if self.active else t

    def flags(self, values: list[float]) -> list[float]:
        """Sum of small host-side values over ranks (one gloo all-reduce, no device sync)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.ctrl_group)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (in rank order); None elsewhere."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.ctrl_group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.ctrl_group)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.ctrl_group)


LOCAL = Comm()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "auto") -> tuple[Comm, torch.device | None]:
    """Join the process group torchrun describes in the environment.

    Returns (LOCAL, None) outside torchrun (the caller picks its device as usual); otherwise the
    Comm and this rank's device: `cuda:LOCAL_RANK` with NCCL where CUDA is available and `device`
    is auto/cuda, else the CPU with gloo.
    """
    world = world_size_from_env()
    if world <= 1:
        return LOCAL, None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device {device}: distributed training runs on cuda or cpu")
    if want_cuda:
        n = torch.cuda.device_count()
        if local >= n:
            raise RuntimeError(f"rank {rank} has LOCAL_RANK {local} but this machine has {n} CUDA "
                               "device(s): start at most that many processes per node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    ctrl = dist.new_group(backend="gloo") if backend != "gloo" else None
    return Comm(dist.get_world_size(), dist.get_rank(), local, ctrl), dev


def cleanup(comm: Comm) -> None:
    if comm.active and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def average_gradients(comm: Comm, params: Iterable[nn.Parameter]) -> None:
    """Average `.grad` over ranks in one flat all-reduce per dtype (a missing grad counts as 0, so
    every rank sends the same layout)."""
    if not comm.active:
        return
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= comm.world_size
        offset = 0
        for p in group:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


# --------------------------------------------------------------------------- SyncBatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (each rank's loss depends on every
    rank's activations through the shared statistics)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        g = g.clone()
        dist.all_reduce(g)
        return g


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch norm with the statistics of the global batch (two-pass mean/variance)."""
    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)
    count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
    dist.all_reduce(count)
    n = float(count.item())
    mean = _AllReduceSum.apply(x.sum(dims)) / n
    xc = x - mean.view(shape)
    var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
    y = xc * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * (n / max(n - 1.0, 1.0))
            bn.running_var.mul_(1 - m).add_(unbiased, alpha=m)
    return y


def _gloo_sync_active(bn: nn.Module) -> bool:
    return bool(bn.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks; works on the CPU (gloo)."""

    def forward(self, x: Tensor) -> Tensor:
        if not _gloo_sync_active(self):
            return super().forward(x)
        return _sync_batch_norm(self, x)


_ACT_CLASSES: dict[type, type] = {}


def _sync_act_class(cls: type) -> type:
    """A subclass of timm's BatchNormAct2d (norm, then its drop and act) with global statistics."""
    if cls not in _ACT_CLASSES:
        def forward(self: Any, x: Tensor) -> Tensor:
            if not _gloo_sync_active(self):
                return cls.forward(self, x)
            return self.act(self.drop(_sync_batch_norm(self, x)))

        _ACT_CLASSES[cls] = type(f"GlooSync{cls.__name__}", (cls,), {"forward": forward})
    return _ACT_CLASSES[cls]


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> synchronised ones; parameters, buffers and state_dict keys unchanged.

    CUDA: timm's converter (it keeps BatchNormAct2d's activation, which torch's own converter would
    silently drop). CPU: the classes of the BatchNorm modules are switched in place to the gloo
    versions above.
    """
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        BatchNormAct2d = ()  # type: ignore[assignment,misc]  # noqa: N806
    for m in model.modules():
        if isinstance(m, (GlooSyncBatchNorm, *_ACT_CLASSES.values())):
            continue
        if BatchNormAct2d and isinstance(m, BatchNormAct2d):
            m.__class__ = _sync_act_class(type(m))
        elif type(m) is nn.BatchNorm2d:
            m.__class__ = GlooSyncBatchNorm
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"--sync-bn on the CPU: cannot synchronise {type(m).__name__}")
    return model


# --------------------------------------------------------------------------- launching
def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs `medmtl <argv>` in `nproc` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "medmtl", *argv]


def strip_devices_option(argv: list[str]) -> list[str]:
    """argv without `--devices N` / `--devices=N` (the launched processes must not relaunch)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--devices":
            skip = True
            continue
        if a.startswith("--devices="):
            continue
        out.append(a)
    return out


__all__ = ["LOCAL", "Comm", "GlooSyncBatchNorm", "average_gradients", "cleanup",
           "convert_sync_batchnorm", "init_distributed", "launch_command", "strip_devices_option",
           "world_size_from_env"]
