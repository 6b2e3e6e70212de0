"""Training and scoring of the SASRec baseline (:mod:`tokenrec.models.sasrec`).

Each epoch visits every user with at least two training items once, in a random order, and teaches the model
to predict every next item of the user's most recent ``max_len + 1`` training items: ``sasrec.loss: softmax``
is cross-entropy over all items with the user's other training items left out (as evaluation leaves them out,
and as LLM4Rec's ``llm.loss: softmax`` does), ``bce`` the SASRec paper's binary cross-entropy on one uniform
negative per position. Validation predicts the validation item from the training sequence; test predicts the test
item from training + validation (:class:`SequenceRanker`), so at test time the model sees the validation
interaction as history, like every sequential model evaluated leave-one-out. Early stopping, history,
checkpoints and resume come from :func:`tokenrec.training.loop.fit`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenrec.config import SasRecConfig, TrainConfig
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import SeenItems, evaluate_split
from tokenrec.models.sasrec import PAD, SASRec
from tokenrec.training.checkpoint import fingerprint
from tokenrec.training.device import pick_device, seed_everything, torch_threads
from tokenrec.training.gnn import NegativeSampler
from tokenrec.training.loop import TrainResult, fit

log = logging.getLogger(__name__)


def left_padded(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """(B, T) tokens (item + 1) of the last ``max_len`` items of each sequence, left-padded with PAD.

    T is the longest kept length in the batch (dynamic padding), at least 1.
    """
    kept = [np.asarray(s[-max_len:], dtype=np.int64) for s in sequences]
    width = max(1, max((len(s) for s in kept), default=1))
    out = np.full((len(kept), width), PAD, dtype=np.int64)
    for row, items in enumerate(kept):
        if len(items):
            out[row, width - len(items) :] = items + 1
    return out


class SequenceRanker:
    """Scores all items for users from their history before the evaluated split (a ScoreRanker)."""

    def __init__(self, model: SASRec, data: InteractionData, max_len: int) -> None:
        self.model, self.data, self.max_len = model, data, max_len
        self._histories: dict[int, list[np.ndarray]] = {}

    def score(self, users: np.ndarray, split: int) -> torch.Tensor:
        if split not in self._histories:
            self._histories[split] = self.data.sequences_before(split)
        history = self._histories[split]
        device = next(self.model.parameters()).device
        seq = torch.from_numpy(left_padded([history[u] for u in users], self.max_len)).to(device)
        self.model.eval()
        with torch.no_grad():
            return self.model.score_next(seq).float()  # (B, n_items)


def build_sasrec(data: InteractionData, cfg: SasRecConfig) -> SASRec:
    return SASRec(data.n_items, cfg.dim, cfg.layers, cfg.heads, cfg.max_len, cfg.dropout)


def train_sasrec(
    model: SASRec,
    data: InteractionData,
    settings: SasRecConfig,
    train: TrainConfig,
    ks: list[int] | tuple[int, ...] = (10, 20, 30),
    out_dir: Path | None = None,
    name: str = "sasrec",
) -> TrainResult:
    """Train SASRec on the training sequences of ``data``; keep the best validation weights.

    Args:
        model: a fresh (or partly trained) :class:`SASRec`.
        data: the snapshot.
        settings: ``cfg.sasrec``.
        train: device, seed, checkpoint interval and progress bar switch.
        ks: validation cut-offs (NDCG@20 always included: it selects the model).
        out_dir: ``history.json`` and ``checkpoints/`` go here; None keeps everything in memory.
        name: label for logs and progress bars.
    """
    device = pick_device(train.device)
    seed_everything(train.seed)
    ks = sorted(set(ks) | {20})
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    kept = [u for u, s in enumerate(data.train_sequences) if len(s) >= 2]
    windows = [data.train_sequences[u][-(settings.max_len + 1) :] for u in kept]
    window_users = np.array(kept, dtype=np.int64)  # (U,) the user of each window
    seen = SeenItems(data, data.VALID)  # softmax: the user's other training items are left out
    sampler = NegativeSampler(*data.train_pairs, data.n_items)  # bce: negatives outside the training items
    if not windows:
        raise ValueError(f"{name}: no user has two training items; SASRec has nothing to learn from")
    inputs = left_padded([w[:-1] for w in windows], settings.max_len)  # (U, T)
    targets = left_padded([w[1:] for w in windows], settings.max_len)  # (U, T), next item tokens
    ranker = SequenceRanker(model, data, settings.max_len)

    def run_epoch(epoch: int) -> dict[str, float]:
        with torch_threads(settings.threads, device):
            return train_epoch(epoch)

    def train_epoch(epoch: int) -> dict[str, float]:
        rng = np.random.default_rng([train.seed, epoch])
        torch.manual_seed(int(rng.integers(2**62)))  # dropout masks of this epoch, independent of resumes
        order = rng.permutation(len(windows))
        total, batches = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            width = int((inputs[rows] != PAD).sum(axis=1).max())  # trim columns that are padding everywhere
            seq = torch.from_numpy(inputs[rows, -width:]).to(device)  # (B, T)
            nxt = torch.from_numpy(targets[rows, -width:]).to(device)  # (B, T)
            hidden = model(seq)  # (B, T, d)
            real = nxt != PAD
            next_items = nxt[real] - 1  # (P,) the next item of every real position
            users = np.repeat(window_users[rows], real.sum(dim=1).cpu().numpy())  # (P,)
            if settings.loss == "bce":
                negatives = torch.as_tensor(sampler.sample(users, rng), device=device)  # (P,) one per position
                pos = (hidden[real] * model.item_emb(next_items + 1)).sum(-1)
                neg = (hidden[real] * model.item_emb(negatives + 1)).sum(-1)
                loss = F.softplus(-pos).mean() + F.softplus(neg).mean()  # -log s(pos) - log(1 - s(neg))
            else:
                logits = model.item_logits(hidden[real])  # (P, n_items)
                rows_seen, items_seen = seen.pairs(users)
                other = items_seen != next_items.cpu()[rows_seen]  # the user's other training items
                logits = logits.index_put(
                    (rows_seen[other].to(device), items_seen[other].to(device)), logits.new_tensor(float("-inf"))
                )
                loss = F.cross_entropy(logits, next_items)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        return {"loss": total / batches}

    def validate() -> dict[str, float]:
        return evaluate_split(data, ranker, data.VALID, ks, settings.eval_batch_size)

    key = fingerprint(settings, train.seed, (data.users, data.items, data.splits), name)
    return fit(model, optimizer, run_epoch, validate, settings, train, out_dir, name, key)
