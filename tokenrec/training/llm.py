"""Fine-tuning loop of LLM4Rec (PAPER.md section 2, "Generative retrieval"), single-process or DDP.

What an epoch trains on (:mod:`tokenrec.training.llm_samples`): with ``llm.training: causal`` (default) one
prompt per window of a user's training items, read under a causal mask so that every position predicts the
next item (all history prefixes in one forward pass); with ``sampled`` (the paper) one prompt per (history
prefix, next item) sample, a share ``llm.id_only_share`` of them written with the ID-only template. The
training wording is drawn per prompt from the paraphrases of :mod:`tokenrec.llm.prompts`; ``llm.samples_per_user``
optionally caps the prompts a user contributes per epoch. Targets ``q`` are the frozen LightGCN item
embeddings. The loss (``llm.loss``, :mod:`tokenrec.models.llm4rec`): ``softmax`` over the whole catalogue
(the user's other training items left out, as evaluation leaves them out), ``sampled_softmax`` (logQ-corrected,
``llm.num_sampled`` items drawn by training popularity), or the paper's ``hinge`` with uniform negatives
outside the user's training items (``llm.num_negatives``) and/or the batch's other targets.

Model selection on validation NDCG@20 only (prompt from the whole training sequence, training items excluded),
with early stopping after ``llm.patience`` validations without improvement; the model ends with the best
weights. Mixed precision (bf16 autocast where the device runs it faster, :func:`tokenrec.training.device.
autocast_dtype`), length-bucketed micro-batches with dynamic padding, gradient accumulation, clipping, warm-up, and separate
learning rates for the backbone (``llm.lr``) and for the projection and new ID-token rows (``llm.head_lr``).

Reproducibility and resume: epoch ``e``'s prompt order (and, sampled, its negatives and ID-only choices) come
from a generator seeded by ``(seed, e)``, the wording, sampled items and causal negatives of micro-batch ``b``
from one seeded by ``(seed, e, b)``. A checkpoint
(weights, optimizer, scheduler, position in the epoch, history, RNG state) is written atomically at the end
of every ``train.checkpoint_every`` epochs and every ``llm.checkpoint_steps`` optimizer steps, and the best
weights in ``best-<epoch>.pt`` whenever validation improves; a restarted run continues from the last complete
checkpoint, on the CPU exactly where an uninterrupted run would be.

Data parallelism (``torchrun``): every rank draws the same epoch plan and takes its own slice of each global
micro-batch of ``batch_size * world`` samples (the incomplete last one is dropped), gradients are averaged by
DDP, validation users are split across ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from tokenrec.config import LlmConfig, RetrievalConfig, TrainConfig
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import SeenItems
from tokenrec.llm.backbone import IdVocabulary
from tokenrec.llm.prompts import PromptEncoder, build_prompts, layout_for, select_rows
from tokenrec.llm.scorer import TokenRecRanker, TokenRecScorer, autocast, evaluate_ranker
from tokenrec.models.llm4rec import LLM4Rec, item_table_loss, sampled_softmax_loss, softmax_loss
from tokenrec.models.quantizer import Tokenizer
from tokenrec.run_folder import CHECKPOINTS_DIR, HISTORY_FILE
from tokenrec.storage import atomic_open, atomic_write_json
from tokenrec.training.checkpoint import (
    CheckpointManager,
    fingerprint,
    fingerprint_folder,
    rng_state,
    set_rng_state,
)
from tokenrec.training.device import autocast_dtype
from tokenrec.training.llm_samples import CausalWindows, PrefixSamples
from tokenrec.training.loop import SELECT_METRIC

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class LlmTrainResult:
    best_epoch: int  # epoch whose weights the model holds (0: never validated)
    best_valid: dict[str, float]  # validation metrics of those weights
    epochs: int  # epochs completed, over all restarts
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


def histories_for(
    samples: PrefixSamples, rows: np.ndarray, id_only: np.ndarray, item_codes: np.ndarray
) -> list[np.ndarray]:
    """Item-code histories ``(h, K)`` of sample indices ``rows``; ``id_only[i]`` empties row i's history."""
    histories = []
    for row, no_history in zip(rows, id_only, strict=True):
        items = samples.history(row)
        histories.append(item_codes[items[:0] if no_history else items])
    return histories


def prompts_for(
    samples: PrefixSamples,
    rows: np.ndarray,
    id_only: np.ndarray,
    user_codes: np.ndarray,
    item_codes: np.ndarray,
    cfg: LlmConfig,
    rng: np.random.Generator,
) -> list[str]:
    """Training prompt strings of sample indices ``rows`` (training itself assembles the same token ids)."""
    histories = histories_for(samples, rows, id_only, item_codes)
    return build_prompts(user_codes[samples.users[rows]], histories, "train", rng, cfg.history_style)


def train_llm(
    model: LLM4Rec,
    vocab: IdVocabulary,
    data: InteractionData,
    tables: dict[str, np.ndarray],
    cfg: LlmConfig,
    train: TrainConfig,
    device: torch.device,
    ks: list[int] | tuple[int, ...] = (10, 20, 30),
    out_dir: Path | None = None,
    ranks: Ranks = Ranks(),
    retrieval: RetrievalConfig | None = None,
    user_decoder: Tokenizer | None = None,
) -> LlmTrainResult:
    """Fine-tune ``model`` on ``data``'s training prefixes; leave the best validation weights in it.

    Args:
        model: LLM4Rec with the ID tokens in its backbone (``vocab``); its ID rows are split off while
            training and merged back at the end.
        vocab: where the ID tokens sit in the text vocabulary.
        data: the snapshot (training sequences for samples, validation targets for selection).
        tables: ``user_codes`` ``(n_users, K)``, ``item_codes`` ``(n_items, K)``, ``item_vectors``
            ``(n_items, d)`` (the frozen targets, also the retrieval index).
        cfg: the ``llm`` section.
        train: seed, checkpoint interval, progress bars.
        device: this process's device.
        ks: validation cut-offs (NDCG@20 always included: it selects the model).
        out_dir: folder for ``history.json``, ``checkpoints/``; None keeps everything in memory.
        ranks: this process's rank and the world size (DDP must already be initialised when world > 1).
        retrieval: how validation scores items (default: cosine, as the paper), the same as evaluation's.
        user_decoder: the user tokenizer, needed when ``retrieval.user_token_weight`` > 0.
    """
    trainer = LlmTrainer(model, vocab, data, tables, cfg, train, device, ks, out_dir, ranks, retrieval, user_decoder)
    return trainer.fit()


class LlmTrainer:
    """The state of one fine-tuning run; see :func:`train_llm`."""

    def __init__(
        self,
        model: LLM4Rec,
        vocab: IdVocabulary,
        data: InteractionData,
        tables: dict[str, np.ndarray],
        cfg: LlmConfig,
        train: TrainConfig,
        device: torch.device,
        ks: list[int] | tuple[int, ...],
        out_dir: Path | None,
        ranks: Ranks,
        retrieval: RetrievalConfig | None = None,
        user_decoder: Tokenizer | None = None,
    ) -> None:
        self.model, self.data, self.tables, self.cfg, self.train = model, data, tables, cfg, train
        self.device, self.ks, self.out_dir, self.ranks = device, sorted(set(ks) | {20}), out_dir, ranks
        self.causal = cfg.training == "causal"
        self.samples: CausalWindows | PrefixSamples = (
            CausalWindows(data, cfg.history_len, cfg.window_stride)
            if self.causal
            else PrefixSamples(data, cfg.history_len)
        )
        self.encoder = PromptEncoder(model.backbone.tokenizer, cfg.history_style)
        if not self.samples.n_targets:
            raise ValueError("no training targets: no user has enough training interactions")
        vectors = tables["item_vectors"]  # (n_items, d): the frozen targets
        self.item_vectors = torch.as_tensor(vectors, dtype=torch.float32, device=device)
        self.normalize_items = retrieval.normalize_items if retrieval is not None else True
        self.seen = SeenItems(data, data.VALID)  # each user's training items: left out of the softmax
        popularity = np.bincount(data.train_pairs[1], minlength=data.n_items) + 1.0  # add-one: every item drawable
        self.proposal = popularity / popularity.sum()  # sampled_softmax: Q(j)
        self.log_q = torch.as_tensor(np.log(self.proposal), dtype=torch.float32, device=device)
        model.to(device)
        model.split_id_embeddings(vocab)
        backbone_params, head_params = model.parameter_groups()
        self.optimizer = torch.optim.AdamW(
            [{"params": backbone_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
            weight_decay=cfg.weight_decay,
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.net: torch.nn.Module = model
        if ranks.world > 1:
            self.net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.amp = autocast_dtype(device, cfg.precision)
        scorer = TokenRecScorer(
            model,
            tables["user_codes"],
            tables["item_codes"],
            vectors,
            history_len=cfg.history_len,
            history_style=cfg.history_style,
            batch_size=cfg.eval_batch_size,
            device=device,
            retrieval=retrieval,
            amp_dtype=self.amp,
            user_decoder=user_decoder,
            layout=layout_for(cfg.training),
        )
        self.validator = TokenRecRanker(scorer, data, "id_only" if cfg.id_only_share >= 1.0 else "full")
        self.state: dict[str, Any] = {
            "epoch": 0,  # epochs completed
            "micro": 0,  # micro-batches completed in the current epoch (a mid-epoch checkpoint)
            "steps": 0,  # optimizer steps, over all epochs
            "best_metric": -1.0,
            "best_epoch": 0,
            "best_valid": {},
            "history": [],
            "partial": {},  # running sums of the current epoch at a mid-epoch checkpoint
        }
        self.best: dict[str, torch.Tensor] = {}
        self.folder = None
        if out_dir is not None:
            self.folder = checkpoint_folder(
                out_dir / CHECKPOINTS_DIR, cfg, train.seed, data, tables, ranks, self.validator.scorer
            )
        self.manager = CheckpointManager(self.folder) if self.folder is not None else None
        if self.manager is not None and (found := self.manager.load_latest(map_location=device)) is not None:
            saved = found[1]
            model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            set_rng_state(saved["rng"])
            self.state = {key: saved[key] for key in self.state}
            self.best = _load_best(self.folder, self.state["best_epoch"])
            log.info(
                "llm4rec: resuming epoch %d at micro-batch %d", self.state["epoch"] + 1, self.state["micro"]
            )
        self.checkpointed_best = self.state["best_epoch"]  # best epoch named by the newest checkpoint

    def finished(self) -> bool:
        state, cfg = self.state, self.cfg
        since_best = state["epoch"] - state["best_epoch"]
        stale = state["best_epoch"] > 0 and since_best >= cfg.patience * cfg.eval_every
        return state["epoch"] >= cfg.max_epochs or stale

    def fit(self) -> LlmTrainResult:
        state = self.state
        while not self.finished():
            epoch = state["epoch"] + 1
            entry = self.run_epoch(epoch)
            if epoch % self.cfg.eval_every == 0 or epoch == self.cfg.max_epochs:
                entry["valid"] = self.validate(epoch)
            log.info("llm4rec epoch %d: %s", epoch, {k: v for k, v in entry.items() if k != "epoch"})
            state.update(epoch=epoch, micro=0, partial={})
            state["history"].append(entry)
            if self.out_dir is not None and self.ranks.main:
                atomic_write_json(self.out_dir / HISTORY_FILE, state["history"])
            if epoch % self.train.checkpoint_every == 0 or self.finished():
                self.save_checkpoint()
        if self.best:
            self.model.load_state_dict(self.best)
        self.model.merge_id_embeddings()
        self.model.eval()
        return LlmTrainResult(state["best_epoch"], state["best_valid"], state["epoch"], state["history"])

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (from a mid-epoch checkpoint's position when resuming); returns its history entry."""
        cfg, ranks, state = self.cfg, self.ranks, self.state
        plan = self.samples.epoch_plan(cfg, self.train.seed, epoch, cfg.batch_size * ranks.world)
        n_plan, global_batch = len(plan["sample"]), cfg.batch_size * ranks.world
        n_micro = n_plan // global_batch if ranks.world > 1 else -(-n_plan // cfg.batch_size)
        if n_micro == 0:
            raise ValueError(f"{n_plan} samples cannot fill one global batch of {global_batch}")
        totals = state["partial"] or {
            "loss": 0.0, "pos_cos": 0.0, "neg_cos": 0.0, "batches": 0, "samples": 0, "targets": 0
        }  # fmt: skip
        wall = time.perf_counter() - totals.get("seconds", 0.0)
        sums = torch.zeros(3, device=self.device)  # loss, pos_cos, neg_cos since the last flush

        def flush() -> None:
            for key, value in zip(("loss", "pos_cos", "neg_cos"), sums.tolist(), strict=True):
                totals[key] += value
            sums.zero_()

        self.model.train()
        show = self.train.progress and ranks.main
        bar = tqdm(total=n_micro, initial=state["micro"], desc=f"llm4rec epoch {epoch}", disable=not show)
        for micro in range(state["micro"], n_micro):
            step_now = (micro + 1) % cfg.grad_accum == 0 or micro + 1 == n_micro
            no_sync = ranks.world > 1 and not step_now  # accumulate locally; DDP averages on the last one
            with self.net.no_sync() if no_sync else contextlib.nullcontext():
                loss, stats, n_rows, n_targets = self.forward(plan, epoch, micro)
                (loss / cfg.grad_accum).backward()
            sums += torch.stack([loss.detach(), stats["pos_cos"], stats.get("neg_cos", sums.new_zeros(()))])
            totals["batches"] += 1
            totals["samples"] += n_rows * ranks.world
            totals["targets"] += n_targets * ranks.world  # approximate under DDP: ranks' windows differ in length
            if step_now:
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state["steps"] += 1
            state["micro"] = micro + 1
            bar.update(1)
            if (micro + 1) % 20 == 0:
                flush()
                bar.set_postfix_str(f"loss {totals['loss'] / totals['batches']:.4f}")
            steps_due = cfg.checkpoint_steps and step_now and state["steps"] % cfg.checkpoint_steps == 0
            if steps_due and micro + 1 < n_micro:
                flush()
                state["partial"] = {**totals, "seconds": time.perf_counter() - wall}
                self.save_checkpoint()
        bar.close()
        flush()
        seconds, n = time.perf_counter() - wall, max(1, totals["batches"])
        means = torch.tensor([totals[key] / n for key in ("loss", "pos_cos", "neg_cos")], device=self.device)
        if ranks.world > 1:  # every rank saw as many batches: the mean of the ranks' means is the global mean
            torch.distributed.all_reduce(means)
            means /= ranks.world
        return {
            "epoch": epoch,
            **dict(zip(("loss", "pos_cos", "neg_cos"), means.tolist(), strict=True)),
            "samples": totals["samples"],  # prompts (prefix samples or causal windows)
            "targets": totals.get("targets", totals["samples"]),  # next items learned from
            "seconds": seconds,
            "samples_per_second": totals["samples"] / max(seconds, 1e-9),
            "targets_per_second": totals.get("targets", totals["samples"]) / max(seconds, 1e-9),
        }

    def forward(
        self, plan: dict[str, np.ndarray], epoch: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, int]:
        """Loss, statistics, prompts and targets of this rank's share of global micro-batch ``micro``.

        The wording (and any sampled item) of the whole global micro-batch is drawn from ``(seed, epoch,
        micro)``, so every prompt gets the same wording whatever the number of ranks.
        """
        size = self.cfg.batch_size
        first = micro * size * self.ranks.world
        every = slice(first, first + size * self.ranks.world)  # the global micro-batch
        mine = slice(self.ranks.rank * size, (self.ranks.rank + 1) * size)  # this rank's part of it
        rng = np.random.default_rng([self.train.seed, epoch, micro])
        prompts = plan["sample"][every]  # (B * world,) sample or window indices of the global micro-batch
        user_codes = self.tables["user_codes"][self.samples.users[prompts]]
        item_codes = self.tables["item_codes"]
        device, max_length = self.device, self.model.backbone.max_length
        multiple = 8 if device.type == "cuda" else None
        rows = prompts[mine]  # (B,) this rank's prompts
        negatives = None
        if self.causal:
            windows = [self.samples.items(w) for w in prompts]
            encoded = self.encoder.encode_causal(user_codes, [item_codes[w[:-1]] for w in windows], "train", rng,
                                                 max_length)  # fmt: skip
            batch = select_rows(encoded, mine, multiple)
            targets = np.full(batch["ends"].shape, -1, dtype=np.int64)  # (B, P): the item each position predicts
            for i, window in enumerate(windows[mine]):
                start = self.samples.first[rows[i]]
                targets[i, start : len(window)] = window[start:]
            chosen = targets >= 0
            inputs = [batch[k].to(device) for k in ("input_ids", "attention_mask", "blocks", "ends")]
            with autocast(device, self.amp):
                z = self.net(*inputs)[torch.as_tensor(chosen, device=device)]  # (N, d), row-major
            users = np.repeat(self.samples.users[rows], chosen.sum(axis=1))  # (N,)
            target_items = targets[chosen]  # (N,)
        else:
            histories = histories_for(self.samples, prompts, plan["id_only"][every], item_codes)
            encoded = self.encoder.encode(user_codes, histories, "train", rng, max_length)
            batch = select_rows(encoded, mine, multiple, self.encoder.padding_side)
            with autocast(device, self.amp):
                z = self.net(batch["input_ids"].to(device), batch["attention_mask"].to(device))  # (B, d)
            users, target_items = self.samples.users[rows], self.samples.targets[rows]
            negatives = plan["negatives"][every][mine]
        loss, stats = self.loss(z, torch.as_tensor(target_items, device=device), users, rng, negatives)
        if self.causal and self.ranks.world > 1:
            # DDP averages the ranks' gradients; ranks hold different numbers of targets, so weigh each rank's
            # mean by its share: the step then follows the mean over the global micro-batch's targets
            every_target = self.samples.stops[prompts] - self.samples.starts[prompts] - self.samples.first[prompts]
            loss = loss * (len(target_items) * self.ranks.world / max(1, int(every_target.sum())))
        return loss, stats, len(rows), len(target_items)

    def loss(
        self,
        z: torch.Tensor,
        targets: torch.Tensor,
        users: np.ndarray,
        rng: np.random.Generator,
        negatives: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``llm.loss`` of vectors ``z`` ``(N, d)`` for ``targets`` ``(N,)`` of ``users`` ``(N,)``.

        ``negatives`` ``(N, n_neg)`` are the epoch plan's for the hinge loss (sampled training); without them
        they are drawn here from ``rng``.
        """
        cfg, device = self.cfg, self.device
        if cfg.loss == "hinge":
            if negatives is None:
                drawn = self.samples.sampler.sample(np.repeat(users, cfg.num_negatives), rng)
                negatives = drawn.reshape(len(users), cfg.num_negatives)
            negatives_t = torch.as_tensor(negatives, device=device)
            return item_table_loss(
                z, targets, negatives_t, self.item_vectors, cfg.margin, cfg.in_batch_negatives
            )
        if cfg.loss == "softmax":
            rows, items = self.seen.pairs(users)
            seen = (rows.to(device), items.to(device))
            return softmax_loss(z, targets, self.item_vectors, cfg.temperature, self.normalize_items, seen)
        candidates = rng.choice(len(self.proposal), size=cfg.num_sampled, p=self.proposal)  # (M,)
        is_seen = self.samples.sampler.is_positive(users[:, None], candidates[None, :])  # (N, M)
        return sampled_softmax_loss(
            z,
            targets,
            self.item_vectors,
            torch.as_tensor(candidates, device=device),
            self.log_q,
            cfg.temperature,
            self.normalize_items,
            torch.as_tensor(is_seen, device=device),
        )

    def validate(self, epoch: int) -> dict[str, float]:
        """Validation metrics of the current weights; keeps them when NDCG@20 improves."""
        ranks, batch = self.ranks, self.cfg.eval_batch_size
        valid = evaluate_ranker(
            self.validator, self.data, self.data.VALID, self.ks, batch, ranks.rank, ranks.world
        )
        if valid[SELECT_METRIC] > self.state["best_metric"]:
            self.state.update(best_metric=valid[SELECT_METRIC], best_epoch=epoch, best_valid=valid)
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            if self.folder is not None and self.ranks.main:
                _save_best(self.folder, epoch, self.best)
        return valid

    def save_checkpoint(self) -> None:
        if self.manager is None or not self.ranks.main:
            return
        optimizer, scheduler = self.optimizer.state_dict(), self.scheduler.state_dict()
        extra = {"model": self.model.state_dict(), "optimizer": optimizer, "scheduler": scheduler}
        self.manager.save(self.state["steps"], {**self.state, **extra, "rng": rng_state()})
        # the manager keeps this checkpoint and the previous one: keep the best weights that both name
        _prune_best(self.manager.folder, keep={self.state["best_epoch"], self.checkpointed_best})
        self.checkpointed_best = self.state["best_epoch"]


def checkpoint_folder(
    root: Path,
    cfg: LlmConfig,
    seed: int,
    data: InteractionData,
    tables: dict[str, np.ndarray],
    ranks: Ranks,
    scorer: TokenRecScorer | None = None,
) -> Path:
    """``root/<fingerprint>``: checkpoints resume only a run with the same data, tables, settings and world.

    Settings that do not change the training trajectory (epoch limit, patience, evaluation batch...) are left
    out, so a finished run can be continued for more epochs. Rank 0 removes other fingerprints' folders.
    """
    arrays = (data.users, data.items, data.splits, *(tables[k] for k in sorted(tables)))
    # how validation scores (it picks the best epoch) is part of the run too
    scoring = None if scorer is None else [scorer.index.cfg.normalize_items, scorer.user_token_weight]
    extra = ranks.world if not scoring or scoring == [True, 0.0] else [ranks.world, scoring]
    return fingerprint_folder(root, fingerprint(cfg, seed, arrays, extra), remove_others=ranks.main)


def _best_path(folder: Path, epoch: int) -> Path:
    return folder / f"best-{epoch:04d}.pt"


def _save_best(folder: Path, epoch: int, weights: dict[str, torch.Tensor]) -> None:
    """Write the best weights of ``epoch``; older ones go once a checkpoint names this epoch best."""
    with atomic_open(_best_path(folder, epoch)) as fh:
        torch.save(weights, fh)


def _prune_best(folder: Path, keep: set[int]) -> None:
    for path in folder.glob("best-*.pt"):
        if path not in {_best_path(folder, epoch) for epoch in keep}:
            path.unlink(missing_ok=True)


def _load_best(folder: Path, epoch: int) -> dict[str, torch.Tensor]:
    """The best weights of ``epoch`` (the one the resumed checkpoint names), or {} before any validation."""
    if epoch == 0:
        return {}
    return torch.load(_best_path(folder, epoch), map_location="cpu", weights_only=True)
