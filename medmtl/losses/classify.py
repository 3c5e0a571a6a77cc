"""View (image-level) classification loss, optionally forward-corrected for label noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medmtl.config import LossConfig
from medmtl.distributed import LOCAL, Comm


def view_balance_terms(cfg: LossConfig, num_views: int, counts: list[int] | None
                       ) -> tuple[list[float] | None, list[float] | None]:
    """(class weights, prior) of the view loss under ``cfg.view_balance``, from the training
    split's view counts: ``weighted`` gives n / (K n_c) unless --view-class-weights names them;
    ``logit-adjust`` gives the prior n_c / n (a class never seen counts as half an image)."""
    w = cfg.view_class_weights
    mode = cfg.view_balance
    if mode not in ("weighted", "logit-adjust") or (mode == "weighted" and w is not None):
        return w, None
    if counts is None or len(counts) != num_views or sum(counts) == 0:
        raise ValueError(f"--view-balance {mode} needs the training split's view counts "
                         f"({num_views} classes), got {counts}")
    c = [max(float(n), 0.5) for n in counts]
    total = sum(c)
    if mode == "weighted":
        return [total / (num_views * n) for n in c], None
    return w, [n / total for n in c]


class ViewLoss:
    """Cross-entropy over the rows of ``view_mask``, with optional label smoothing and class weights
    (``LossConfig.label_smoothing``, ``LossConfig.view_class_weights``); PyTorch's weighted mean
    (sum of w[y] * loss / sum of w[y]). Returns None when no row has a view label.

    Under data parallelism (`comm` active) the mean's denominator is that of the *global* batch
    (divided by the world size), so the ranks' average is the global batch's loss; every rank must
    call it, and a rank without view labels gets a graph-connected zero instead of None.

    ``corruption`` (a (K, K) matrix, ``C[i, j]`` = P(label file says j | true view i); rows sum
    to 1) turns on forward loss correction (Hendrycks et al. 2018, ``--view-labels forward``): a
    labelled row that is not ``trusted`` has the loss ``-log((softmax(z) @ C)[y] + 1e-12)`` (the
    softmax models the clean view, ``C`` carries it to the noisy label the file gives); a trusted
    row (its clip's view judged by a person) has the plain ``-log softmax(z)[y]``. Label
    smoothing and class weights apply to either log-probability as PyTorch's cross-entropy applies
    them to ``log softmax`` (the weight of a row is that of its label), with the same weighted
    mean; logit adjustment adds the log prior to ``z`` first. Inference reads the plain
    ``softmax(z)``: the clean-view posterior."""

    def __init__(self, num_views: int, cfg: LossConfig | None = None,
                 counts: list[int] | None = None, corruption: Any = None) -> None:
        cfg = cfg if cfg is not None else LossConfig()
        self.num_views = num_views
        self.corruption = None if corruption is None else _corruption_tensor(corruption,
                                                                             num_views)
        self.label_smoothing = float(cfg.label_smoothing)
        w, prior = view_balance_terms(cfg, num_views, counts)
        if w is not None and len(w) != num_views:
            raise ValueError(f"view_class_weights has {len(w)} entries, expected {num_views}")
        self.weight = torch.tensor(w, dtype=torch.float32) if w is not None else None
        # logit adjustment: the training logits get + log(prior), so that the softmax trained on
        # them leaves the plain logits balanced (inference reads the plain logits)
        self.log_prior = torch.tensor(prior, dtype=torch.float32).log() if prior else None
        # per-device copies of the weights and the log prior, made once
        self._on: dict[tuple[str, torch.device], Tensor] = {}

    def _on_device(self, name: str, device: torch.device) -> Tensor | None:
        t = getattr(self, name)
        if t is None:
            return None
        key = (name, device)
        if key not in self._on:
            self._on[key] = t.to(device)
        return self._on[key]

    def _adjust(self, logits: Tensor) -> Tensor:
        lp = self._on_device("log_prior", logits.device)
        return logits if lp is None else logits + lp

    def __call__(self, logits: Tensor, view: Tensor, view_mask: Tensor, comm: Comm = LOCAL,
                 present: bool = False, trusted: Tensor | None = None) -> Tensor | None:
        """`present=True`: the caller knows (on the host) that the batch has view labels; the
        loss is then computed without boolean indexing, i.e. without a device-to-host sync.
        `trusted` (bool (B,), None = none): rows whose label is trusted, left uncorrected."""
        mask = view_mask.to(device=logits.device, dtype=torch.bool)
        logits = self._adjust(logits)
        if self.corruption is not None:
            if not (comm.active or present) and not bool(mask.any()):
                return None
            return self._forward_corrected(logits, view, mask, trusted, comm,
                                           comm.active or present)
        if comm.active or present:
            return self._global_mean(logits, view, mask, comm)
        if not bool(mask.any()):  # the one host sync: None must be decided on the host
            return None
        weight = self._weight(logits.device)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(
                logits[mask].float(), view.to(logits.device)[mask].long(), weight=weight,
                label_smoothing=self.label_smoothing,
            )

    def _weight(self, device: torch.device) -> Tensor | None:
        return self._on_device("weight", device)

    def _global_mean(self, logits: Tensor, view: Tensor, mask: Tensor, comm: Comm) -> Tensor:
        """PyTorch's weighted mean with the global batch's denominator (no boolean indexing)."""
        weight = self._weight(logits.device)
        target = torch.where(mask, view.to(logits.device).long(), 0)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            per = F.cross_entropy(logits.float(), target, weight=weight,
                                  label_smoothing=self.label_smoothing, reduction="none")
        w_row = mask.float() if weight is None else weight[target] * mask
        denom = comm.sum(w_row.sum()).clamp(min=1e-12) / comm.world_size
        return (per * mask).sum() / denom

    def _forward_corrected(self, logits: Tensor, view: Tensor, mask: Tensor,
                           trusted: Tensor | None, comm: Comm, global_mean: bool) -> Tensor:
        """The forward-corrected loss: per-row losses, PyTorch's weighted mean (the global
        batch's denominator with `global_mean`)."""
        dev = logits.device
        weight = self._weight(dev)
        corruption = self._on_device("corruption", dev)
        assert corruption is not None
        target = torch.where(mask, view.to(dev).long(), 0)
        keep = torch.zeros_like(mask) if trusted is None else trusted.to(dev, torch.bool) & mask
        with torch.autocast(device_type=dev.type, enabled=False):
            logp = F.log_softmax(logits.float(), dim=-1)
            noisy = torch.log(logp.exp() @ corruption + 1e-12)  # log P(file's label | x)
            per = smoothed_nll(torch.where(keep[:, None], logp, noisy), target, weight,
                               self.label_smoothing)
        w_row = mask.float() if weight is None else weight[target] * mask
        denom = comm.sum(w_row.sum()) / comm.world_size if global_mean else w_row.sum()
        return (per * mask).sum() / denom.clamp(min=1e-12)


def smoothed_nll(logp: Tensor, target: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """Per-row ``F.cross_entropy(..., weight, label_smoothing=eps, reduction="none")`` of
    log-probabilities `logp` (B, K): ``(1 - eps) w[y] (-logp[y]) + eps / K sum_j w[j] (-logp[j])``
    (w = 1 without weights)."""
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if weight is not None:
        nll = nll * weight[target]
    if eps == 0:
        return nll
    smooth = -(logp * weight).sum(-1) if weight is not None else -logp.sum(-1)
    return (1 - eps) * nll + eps / logp.shape[-1] * smooth


def _corruption_tensor(corruption: Any, num_views: int) -> Tensor:
    c = np.asarray(corruption.detach().cpu() if isinstance(corruption, Tensor) else corruption,
                   dtype=np.float64)
    if c.shape != (num_views, num_views) or not np.all(np.isfinite(c)) or c.min() < 0 \
            or not np.allclose(c.sum(1), 1.0, atol=1e-3):
        raise ValueError(f"the corruption matrix must be {num_views}x{num_views} (the view "
                         f"classes), non-negative, rows summing to 1; got shape {c.shape}")
    return torch.tensor(c / c.sum(1, keepdims=True), dtype=torch.float32)
