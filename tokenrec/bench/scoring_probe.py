"""Where TokenRec's ranking quality comes from: a trained run's vectors scored several ways, no retraining.

    python -m tokenrec.bench.scoring_probe --dataset lastfm --profile bench-cpu \\
        --snapshot var/bench/lastfm/lake/interactions/snapshot_date=2026-11-27 \\
        --run-dir var/bench/lastfm/runs/quality-bench-cpu

For one run folder (``gnn/``, ``tokenizer/``, ``llm/``) it scores, on validation and on test, with every seen
item excluded (the evaluation protocol of :mod:`tokenrec.evaluation.protocol`):

* ``lightgcn``: the user's LightGCN vector . item vectors (the baseline itself);
* ``lightgcn_cosine``: the same user vector against *normalised* item vectors (TokenRec's retrieval metric);
* ``user_tokens``: the user's own vector decoded from its K ID tokens by the MQ-Tokenizer, against normalised
  items: what the user-ID tokens alone carry, before any LLM;
* ``last_item``: the LightGCN vector of the user's most recent item against normalised items (item-to-item
  neighbours, nothing learned for the sequence): how much next-item signal the frozen item space holds that a
  history-reading model could reach;
* ``tokenrec``: LLM4Rec's vector (history prompt) against normalised items, as the pipeline ranks;
* ``tokenrec_raw_items``: LLM4Rec's vector against the raw item vectors (item norms act as a popularity prior);
* ``tokenrec_history_one_stale``: LLM4Rec's vector from a history without its most recent item (the target's
  predecessor), to see how much of the score comes from the last item before the target;
* ``tokenrec_plus_user_tokens_a``: the normalised LLM4Rec vector plus ``a`` times the normalised decoded user
  vector, against normalised and raw items;
* ``tokenrec_plus_user_tokens_1_item_norm_power_b``: that mix with a = 1 against unit item vectors scaled by
  their norm to the power b (b = 0 is cosine, b = 1 the raw vectors): how strong a popularity prior helps.

It is a diagnostic, not a model: a variant that helps on validation is a candidate for the model, to be
trained end to end and measured by ``tokenrec.bench.quality``. Writes ``probe-tokenrec-scoring-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tokenrec.artifacts import load_embeddings, load_tokenizer
from tokenrec.bench.machine import add_run_arguments, write_result
from tokenrec.cli import build_config
from tokenrec.data.interactions import InteractionData
from tokenrec.evaluation.protocol import EmbeddingRanker, evaluate_split
from tokenrec.llm.scorer import TokenRecScorer
from tokenrec.run_folder import RunFolder, gnn_table

MIX_WEIGHTS = (0.5, 1.0, 2.0, 4.0)
NORM_POWERS = (0.5, 1.5, 2.0)


def probe(cfg: Any, snapshot: Path, run_dir: Path) -> dict[str, Any]:
    """``{variant: {"valid": metrics, "test": metrics}}`` for the variants of the module docstring."""
    data = InteractionData.load(snapshot)
    run = RunFolder(run_dir)
    names = [gnn_table("user", cfg.gnn.output), gnn_table("item", cfg.gnn.output)]
    user, item = load_embeddings(run, names).values()  # (n_users, d), (n_items, d)
    item_unit = F.normalize(item, dim=-1)
    norm = item.norm(dim=-1, keepdim=True)  # (n_items, 1)
    decoded = F.normalize(load_tokenizer(run, "user").reconstruct(user), dim=-1)  # (n_users, d)
    # the LLM4Rec vector alone: the mixes below add the decoded user vector themselves, whatever the config says
    scorer = TokenRecScorer.from_run(run_dir, replace(cfg, retrieval=replace(cfg.retrieval, user_token_weight=0.0)))
    users = np.arange(data.n_users)
    results: dict[str, dict[str, Any]] = {}
    for split, split_name in ((data.VALID, "valid"), (data.TEST, "test")):
        sequences = data.sequences_before(split)
        llm = F.normalize(torch.from_numpy(scorer.embed(users, sequences)), dim=-1)
        stale = F.normalize(torch.from_numpy(scorer.embed(users, [s[:-1] for s in sequences])), dim=-1)
        variants = {
            "lightgcn": (user, item),
            "lightgcn_cosine": (user, item_unit),
            "user_tokens": (decoded, item_unit),
            "last_item": (last_item_vectors(item_unit, sequences), item_unit),
            "tokenrec": (llm, item_unit),
            "tokenrec_raw_items": (llm, item),
            "tokenrec_history_one_stale": (stale, item_unit),
        }
        for a in MIX_WEIGHTS:
            variants[f"tokenrec_plus_user_tokens_{a:g}"] = (llm + a * decoded, item_unit)
            variants[f"tokenrec_plus_user_tokens_{a:g}_raw_items"] = (llm + a * decoded, item)
        for beta in NORM_POWERS:  # the item norm as a popularity prior, weaker or stronger than raw (beta = 1)
            variants[f"tokenrec_plus_user_tokens_1_item_norm_power_{beta:g}"] = (llm + decoded, item_unit * norm**beta)
        for name, (u, i) in variants.items():
            results.setdefault(name, {})[split_name] = evaluate_split(data, EmbeddingRanker(u, i), split)
    return results


def last_item_vectors(items: torch.Tensor, sequences: list[np.ndarray]) -> torch.Tensor:
    """``(U, d)``: each user's most recent item's row of ``items`` ``(n_items, d)``, zeros for an empty history."""
    out = items.new_zeros((len(sequences), items.shape[1]))
    rows = [u for u, s in enumerate(sequences) if len(s)]
    out[rows] = items[torch.as_tensor([sequences[u][-1] for u in rows], dtype=torch.long)]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--name", help="result name: docs/benchmarks/<name>.json (default probe-tokenrec-scoring-<dataset>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = build_config(args)
    results = {"dataset": cfg.source.dataset, "run_dir": str(args.run_dir), **probe(cfg, args.snapshot, args.run_dir)}
    command = " ".join(["python -m tokenrec.bench.scoring_probe", *(argv or sys.argv[1:])])
    write_result(args.name or f"probe-tokenrec-scoring-{cfg.source.dataset}", results, command)


if __name__ == "__main__":
    main()
