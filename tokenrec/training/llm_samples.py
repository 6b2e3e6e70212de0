"""What one epoch of LLM4Rec fine-tuning trains on: prefix samples (the paper) or causal windows (ours).

Both read a user's training sequence ``s_0 .. s_{n-1}`` (time order) and teach the model to predict each
next item from the items before it, at most ``llm.history_len`` (H) of them.

``sampled`` (:class:`PrefixSamples`, PAPER.md section 2): every position ``p >= 1`` is one sample, one prompt
showing ``s_{max(0, p-H)} .. s_{p-1}`` and one target ``s_p``: a user with n items costs n - 1 forward passes.

``causal`` (:class:`CausalWindows`): a user's sequence is tiled by windows ``s_a .. s_{c-1}`` of at most H + 1
items whose ends ``c`` step back from ``n`` by ``llm.window_stride`` (default H + 1: no overlap). One prompt
shows the window's first ``c - a - 1`` items; read under a causal mask (:meth:`tokenrec.llm.backbone.Backbone.
forward_positions`), its position ``t`` (0 = the prefix before any item) has seen ``s_a .. s_{a+t-1}`` and
predicts ``s_{a+t}``, so every item of the window is a target of one forward pass. Where windows overlap, the
earlier positions of a later window are context only, so each item is a target exactly once per epoch.

Batches: an epoch's prompts are shuffled, cut into chunks of ``llm.bucket_batches`` global micro-batches and
sorted by length inside each chunk, and the micro-batches are shuffled again; a batch then pads to nearly its
own length (dynamic padding) while the epoch stays a random order. Everything is drawn from a generator
seeded by ``(seed, epoch)``, so an epoch's plan is the same after a restart.
"""

from __future__ import annotations

import numpy as np

from tokenrec.config import LlmConfig
from tokenrec.data.interactions import InteractionData
from tokenrec.training.gnn import NegativeSampler


class PrefixSamples:
    """All (user, position) samples of the training prefixes: target ``seq[p]``, history ``seq[p-H:p]``."""

    def __init__(self, data: InteractionData, history_len: int) -> None:
        self.sequences = data.train_sequences
        self.history_len = history_len
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        counts = np.maximum(lengths - 1, 0)  # positions 1 .. n-1 (0-based), i.e. t = 2 .. n
        self.users = np.repeat(np.arange(len(lengths)), counts)  # (N,), sorted by user
        firsts = np.cumsum(counts) - counts
        self.positions = np.arange(counts.sum()) - np.repeat(firsts, counts) + 1  # (N,)
        self.targets = np.concatenate([s[1:] for s in self.sequences]) if len(lengths) else self.users
        self.sampler = NegativeSampler(*data.train_pairs, data.n_items)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_targets(self) -> int:
        return len(self)

    def lengths(self) -> np.ndarray:
        """``(N,)`` items each sample's prompt shows."""
        return np.minimum(self.positions, self.history_len)

    def history(self, sample: int) -> np.ndarray:
        """The items sample ``sample``'s prompt shows, in time order."""
        position = self.positions[sample]
        return self.sequences[self.users[sample]][max(0, position - self.history_len) : position]

    def epoch_plan(self, cfg: LlmConfig, seed: int, epoch: int, batch: int = 0) -> dict[str, np.ndarray]:
        """Samples of ``epoch`` in training order, their negatives ``(M, n_neg)`` and ID-only flags ``(M,)``.

        Args:
            cfg: ``samples_per_user``, ``num_negatives``, ``id_only_share``, ``bucket_batches``.
            seed, epoch: the generator's seed.
            batch: global micro-batch size for length bucketing (0 = no bucketing).
        """
        rng = np.random.default_rng([seed, epoch])
        chosen = np.arange(len(self))
        if cfg.samples_per_user:
            chosen = per_user_cap(self.users, cfg.samples_per_user, rng)
        order = bucketed(chosen[rng.permutation(len(chosen))], self.lengths(), batch, cfg.bucket_batches, rng)
        users = self.users[order]
        n_neg = cfg.num_negatives if cfg.loss == "hinge" else 0  # the softmax losses need none
        negatives = self.sampler.sample(np.repeat(users, n_neg), rng)
        return {
            "sample": order,
            "negatives": negatives.reshape(len(order), n_neg),
            "id_only": rng.random(len(order)) < cfg.id_only_share,
        }


class CausalWindows:
    """Every user's training sequence as windows of at most ``history_len + 1`` items (see the module doc).

    Window ``w`` covers ``sequences[users[w]][starts[w] : stops[w]]``; its prompt shows all but the last of
    those items, and its positions ``first[w] ..`` (of ``0 .. stops[w] - starts[w] - 1``) are targets.
    """

    def __init__(self, data: InteractionData, history_len: int, stride: int = 0) -> None:
        self.sequences = data.train_sequences
        self.history_len = history_len
        span = history_len + 1  # items per window: H shown, every one of them and one more a target
        stride = stride or span
        users, starts, stops, firsts = [], [], [], []
        for user, sequence in enumerate(self.sequences):
            stop = len(sequence)
            while stop > 0:  # from the most recent window back; the earliest one starts at item 0
                start = max(0, stop - span)
                users.append(user)
                starts.append(start)
                stops.append(stop)
                # a later window's targets are its last `stride` items; the earliest takes everything before
                firsts.append(0 if start == 0 else stop - stride - start)
                if start == 0:
                    break
                stop -= stride
        order = np.lexsort((np.array(starts, dtype=np.int64), np.array(users, dtype=np.int64)))
        self.users = np.array(users, dtype=np.int64)[order]  # (W,), sorted by user, then time
        self.starts = np.array(starts, dtype=np.int64)[order]
        self.stops = np.array(stops, dtype=np.int64)[order]
        self.first = np.array(firsts, dtype=np.int64)[order]
        self.sampler = NegativeSampler(*data.train_pairs, data.n_items)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_targets(self) -> int:
        return int((self.stops - self.starts - self.first).sum())

    def lengths(self) -> np.ndarray:
        """``(W,)`` items each window's prompt shows."""
        return self.stops - self.starts - 1

    def items(self, window: int) -> np.ndarray:
        """The window's items ``(c - a,)``: the prompt shows all but the last, every one is a target."""
        return self.sequences[self.users[window]][self.starts[window] : self.stops[window]]

    def epoch_plan(self, cfg: LlmConfig, seed: int, epoch: int, batch: int = 0) -> dict[str, np.ndarray]:
        """Windows of ``epoch`` in training order (``samples_per_user`` caps the windows per user)."""
        rng = np.random.default_rng([seed, epoch])
        chosen = np.arange(len(self))
        if cfg.samples_per_user:
            chosen = per_user_cap(self.users, cfg.samples_per_user, rng)
        return {"sample": bucketed(chosen[rng.permutation(len(chosen))], self.lengths(), batch,
                                   cfg.bucket_batches, rng)}  # fmt: skip


def per_user_cap(users: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` rows per user, drawn at random (``users`` sorted), in index order."""
    by_user = np.lexsort((rng.random(len(users)), users))  # random order inside each user
    first = np.searchsorted(users, users[by_user])  # index of the user's first row
    return np.sort(by_user[np.arange(len(users)) - first < cap])


def bucketed(
    order: np.ndarray, lengths: np.ndarray, batch: int, bucket_batches: int, rng: np.random.Generator
) -> np.ndarray:
    """``order`` rearranged so that each run of ``batch`` rows has similar ``lengths`` (see the module doc).

    Chunks of ``batch * bucket_batches`` rows of the shuffled ``order`` are sorted by length (stable), then
    cut into batches, and the batches are shuffled; a last incomplete batch stays last.
    """
    if batch <= 0 or bucket_batches <= 1 or len(order) <= batch:
        return order
    chunk = batch * bucket_batches
    sorted_rows = np.concatenate(
        [part[np.argsort(lengths[part], kind="stable")] for part in np.split(order, range(chunk, len(order), chunk))]
    )
    full = len(sorted_rows) // batch
    batches = sorted_rows[: full * batch].reshape(full, batch)[rng.permutation(full)]
    return np.concatenate([batches.reshape(-1), sorted_rows[full * batch :]])
