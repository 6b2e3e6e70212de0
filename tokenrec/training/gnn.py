"""BPR training loop shared by LightGCN and matrix factorisation, with early stopping and exact resume.

Each epoch visits every training edge once in a fresh random order (``sampling: edge``), or draws as many
(user, positive) pairs by picking a user uniformly among those with training items and then one of its items
(``sampling: user``, the sampler of the LightGCN authors' code, which weighs light users as much as heavy
ones). Each pair gets one negative item drawn uniformly from the items the user has not interacted with in
training; batches of ``batch_size`` (PAPER.md section 2, step 0). The loss is

    BPR = mean_b softplus(<e_u, e_n> - <e_u, e_p>)  +  l2 / 2 * (|u_0|^2 + |p_0|^2 + |n_0|^2) / B

with the L2 term on the batch's *ego* embeddings. Every ``eval_every`` epochs the model is scored on the
validation split; the best NDCG@20 so far is kept and training stops after ``patience`` epochs without
improvement. The returned model holds the best weights.

Reproducibility and resume: the order and negatives of epoch ``e`` come from a generator seeded by
``(seed, e)``, and a checkpoint (model, optimizer, epoch, best metric and weights, history, RNG state) is
written atomically every ``checkpoint_every`` epochs, so a run killed at any point and restarted ends exactly
where an uninterrupted run ends (on the CPU, bit for bit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokenrec.config import GnnConfig, TrainConfig
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_split
from tokenrec.models.lightgcn import LightGCN, normalized_adjacency
from tokenrec.training.checkpoint import fingerprint
from tokenrec.training.device import cpu_threads, pick_device, seed_everything, torch_threads
from tokenrec.training.loop import SELECT_METRIC, TrainResult, fit

log = logging.getLogger(__name__)

__all__ = [
    "SELECT_METRIC",
    "BprSettings",
    "NegativeSampler",
    "TrainResult",
    "bpr_loss",
    "build_lightgcn",
    "run_bpr_epoch",
    "train_bpr",
]


class BprSettings(Protocol):
    """The fields of :class:`tokenrec.config.GnnConfig` / :class:`tokenrec.config.MfConfig` the loop reads."""

    lr: float
    l2: float
    batch_size: int
    max_epochs: int
    patience: int
    eval_every: int
    eval_batch_size: int
    sampling: str


class NegativeSampler:
    """Uniform negatives: items the user has no training interaction with (rejection, vectorised)."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        self.n_items = n_items
        self.positive_keys = np.unique(users.astype(np.int64) * n_items + items)  # sorted (user, item) keys
        self._runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # per user: id, first key, count

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """True where (user, item) is a training interaction (same shapes)."""
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self.positive_keys, keys)
        pos = np.minimum(pos, len(self.positive_keys) - 1)
        return self.positive_keys[pos] == keys

    def sample_pairs(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``count`` (user, positive) pairs: a user uniformly among those with training items, then one of them."""
        if self._runs is None:  # keys are sorted, so each user's items are one run
            self._runs = np.unique(self.positive_keys // self.n_items, return_index=True, return_counts=True)
        active, starts, degrees = self._runs
        picked = rng.integers(0, len(active), size=count)
        offsets = (rng.random(count) * degrees[picked]).astype(np.int64)
        keys = self.positive_keys[starts[picked] + offsets]
        return keys // self.n_items, keys % self.n_items

    def sample(self, users: np.ndarray, rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
        """(len(users),) negatives; a user who has every item keeps a random (positive) one."""
        negatives = rng.integers(0, self.n_items, size=len(users))
        todo = np.flatnonzero(self.is_positive(users, negatives))
        for _ in range(max_rounds):
            if not len(todo):
                break
            negatives[todo] = rng.integers(0, self.n_items, size=len(todo))
            todo = todo[self.is_positive(users[todo], negatives[todo])]
        return negatives


def bpr_loss(
    model: nn.Module, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BPR loss, L2 term) of one batch; see the module docstring."""
    emb = model(users, pos, neg)  # BatchEmbeddings, (B, d) each
    ranking = F.softplus((emb.user * emb.neg).sum(-1) - (emb.user * emb.pos).sum(-1)).mean()
    squares = emb.user_ego.pow(2).sum() + emb.pos_ego.pow(2).sum() + emb.neg_ego.pow(2).sum()
    reg = l2 * 0.5 * squares / len(users)
    return ranking, reg


def build_lightgcn(data: InteractionData, cfg: GnnConfig) -> LightGCN:
    """A fresh LightGCN over ``data``'s training graph."""
    users, items = data.train_pairs
    graph = normalized_adjacency(users, items, data.n_users, data.n_items)
    threads = cfg.threads or cpu_threads()
    return LightGCN(
        data.n_users, data.n_items, cfg.dim, cfg.layers, graph, cfg.init_std, threads, cfg.refresh_every
    )


def train_bpr(
    model: nn.Module,
    data: InteractionData,
    settings: BprSettings,
    train: TrainConfig,
    ks: list[int] | tuple[int, ...] = (10, 20, 30),
    out_dir: Path | None = None,
    name: str = "model",
) -> TrainResult:
    """Train ``model`` (LightGCN or MF) with BPR on ``data``'s training edges; keep the best validation weights.

    Args:
        model: a module with ``forward(users, pos, neg) -> BatchEmbeddings`` and ``propagate()``
            (:class:`tokenrec.models.lightgcn.LightGCN`, :class:`tokenrec.models.mf.MatrixFactorization`).
        data: the snapshot; only its training edges are used for training.
        settings: optimisation settings (``cfg.gnn`` or ``cfg.mf``).
        train: device, seed, checkpoint interval and progress bar switch.
        ks: cut-offs of the validation metrics (NDCG@20 is always computed: it selects the model).
        out_dir: where ``history.json`` and ``checkpoints/`` go; None keeps everything in memory (no resume).
        name: label for logs and progress bars.
    """
    device = pick_device(train.device)
    torch.set_num_threads(cpu_threads())  # evaluations use every core; epochs use one, see run_epoch
    seed_everything(train.seed)
    ks = sorted(set(ks) | {20})
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=device.type in ("cpu", "cuda"))
    users, items = data.train_pairs
    if not len(users):
        raise ValueError(f"{name}: the snapshot has no training interactions")
    sampler = NegativeSampler(users, items, data.n_items)

    def run_epoch(epoch: int) -> dict[str, float]:
        # The per-batch torch work is small (gathers of a few thousand rows, one fused Adam update): one
        # intra-op thread; the sparse graph products, the bulk of the work, run on their own threads.
        with torch_threads(1, device):
            loss, reg = run_bpr_epoch(
                model, optimizer, sampler, users, items, settings, train.seed, epoch, device
            )
        return {"loss": loss, "reg": reg}

    def validate() -> dict[str, float]:
        ranker = EmbeddingRanker(*model.propagate())
        return evaluate_split(data, ranker, data.VALID, ks, settings.eval_batch_size)

    key = fingerprint(settings, train.seed, (data.users, data.items, data.splits), [name, type(model).__name__])
    return fit(model, optimizer, run_epoch, validate, settings, train, out_dir, name, key)


def run_bpr_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: NegativeSampler,
    users: np.ndarray,
    items: np.ndarray,
    settings: BprSettings,
    seed: int,
    epoch: int,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over the training edges; returns the mean BPR loss and mean L2 term."""
    rng = np.random.default_rng([seed, epoch])
    if settings.sampling == "user":
        pair_users, pair_items = sampler.sample_pairs(len(users), rng)
    else:
        order = rng.permutation(len(users))
        pair_users, pair_items = users[order], items[order]
    epoch_users = torch.from_numpy(pair_users).to(device)  # (E,)
    epoch_pos = torch.from_numpy(pair_items).to(device)
    epoch_neg = torch.from_numpy(sampler.sample(pair_users, rng)).to(device)
    total_loss = torch.zeros((), device=device)
    total_reg = torch.zeros((), device=device)
    n_batches = 0
    refresh_every = getattr(model, "refresh_every", 1)  # LightGCN's approximate mode, see its docstring
    for batch, start in enumerate(range(0, len(pair_users), settings.batch_size)):
        stop = start + settings.batch_size
        if refresh_every > 1 and batch % refresh_every == 0:
            model.refresh()
        ranking, reg = bpr_loss(
            model, epoch_users[start:stop], epoch_pos[start:stop], epoch_neg[start:stop], settings.l2
        )
        optimizer.zero_grad(set_to_none=True)
        (ranking + reg).backward()
        optimizer.step()
        total_loss += ranking.detach()
        total_reg += reg.detach()
        n_batches += 1
    return float(total_loss) / n_batches, float(total_reg) / n_batches
