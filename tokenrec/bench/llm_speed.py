"""LLM4Rec throughput: inference users/s per backbone, prompt family and precision; training samples/s.

    python -m tokenrec.bench.llm_speed --backbones minilm smollm2 --name speed-llm-cpu

Inference is what batch inference and evaluation do per user: assemble the prompt's token ids (the same ids as
tokenizing the prompt string, :class:`tokenrec.llm.prompts.PromptEncoder`) with dynamic padding,
one forward pass of the backbone, the projection, and the exact cosine top-K search over the item index with the
user's seen items excluded (:meth:`tokenrec.llm.scorer.TokenRecScorer.recommend`). Throughput does not depend
on trained weights, so the model is the backbone with the K * L user and item ID tokens added and a fresh
projection; users, histories and token tables are synthetic with the sizes of the paper's data sets (2,000 users,
H most recent items each from a 4,000-item catalog, K = 3, L = 256). Each configuration is timed over
``--users`` users after one warm-up batch, on every CPU thread torch uses by default (or the GPU).

Prompt families: ``history`` (H items, the compact style: item tokens only), ``history_paper`` (H items in the
paper's wording, ``item_<v1-..><v2-..><v3-..>, ...``) and ``id_only`` (the user-ID-only prompt). Precisions:
``fp32`` and ``bf16`` (autocast; on a CPU without native bf16 this can be slower, which the numbers show).
Training: optimizer steps of the TokenRec loss (1 - cos to the target, hinge on one uniform negative) on history
prompts, batch ``--train-batch``, fp32 on a CPU and bf16 autocast on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenrec.bench.machine import machine, write_result
from tokenrec.config import load_config
from tokenrec.llm.backbone import add_id_tokens, load_backbone
from tokenrec.llm.prompts import PromptEncoder, history_codes
from tokenrec.llm.scorer import TokenRecScorer
from tokenrec.models.llm4rec import LLM4Rec, item_table_loss
from tokenrec.training.device import pick_device

K, L, N_ITEMS, DIM = 3, 256, 4000, 64
PROMPTS = {"history": ("full", "compact"), "history_paper": ("full", "paper"), "id_only": ("id_only", "compact")}


def synthetic_users(n_users: int, history_len: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """User codes ``(n, K)``, per-user item sequences (history_len + 5 items each) and item codes ``(N_ITEMS, K)``."""
    rng = np.random.default_rng(seed)
    user_codes = rng.integers(0, L, size=(n_users, K))
    item_codes = rng.integers(0, L, size=(N_ITEMS, K))
    sequences = [rng.choice(N_ITEMS, history_len + 5, replace=False) for _ in range(n_users)]
    return user_codes, sequences, item_codes


def build_model(backbone_name: str, home: Path, device: torch.device) -> LLM4Rec:
    cfg = load_config(overrides=[f"llm.backbone={backbone_name}", f"paths.home={home}"])
    backbone = load_backbone(cfg.llm, home / "cache" / "backbones")
    add_id_tokens(backbone, K, L)
    torch.manual_seed(0)
    return LLM4Rec(backbone, DIM, cfg.llm.proj_hidden).to(device).eval()


def time_inference(
    model: LLM4Rec, prompt: str, dtype: str, batch: int, users: int, history_len: int, device: torch.device
) -> dict[str, Any]:
    variant, style = PROMPTS[prompt]
    user_codes, sequences, item_codes = synthetic_users(users, history_len)
    rng = np.random.default_rng(1)
    item_vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    amp = torch.bfloat16 if dtype == "bf16" else None
    scorer = TokenRecScorer(
        model, user_codes, item_codes, item_vectors, history_len, style, batch, device, amp_dtype=amp
    )
    ids = np.arange(users)
    seen = [seq[:history_len] for seq in sequences]
    scorer.recommend(ids[:batch], sequences, 100, seen[:batch], variant)  # warm-up
    started = time.perf_counter()
    scorer.recommend(ids, sequences, 100, seen, variant)
    seconds = time.perf_counter() - started
    example = history_codes(sequences, ids[:1], item_codes, history_len)
    shown = None if variant == "id_only" else example
    tokens = int(scorer.encoder.encode(user_codes[:1], shown, "eval")["attention_mask"].sum())
    return {
        "prompt": prompt, "dtype": dtype, "batch": batch, "users": users, "seconds": seconds,
        "users_per_s": users / seconds, "prompt_tokens": tokens,
    }  # fmt: skip


def time_training(model: LLM4Rec, batch: int, steps: int, history_len: int, device: torch.device) -> dict[str, Any]:
    user_codes, sequences, item_codes = synthetic_users(batch * (steps + 1), history_len)
    item_vectors = torch.randn(N_ITEMS, DIM, device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    amp = torch.bfloat16 if device.type == "cuda" else None
    encoder = PromptEncoder(model.backbone.tokenizer, "compact")
    model.train()
    rng = np.random.default_rng(2)
    seconds = 0.0
    for step in range(steps + 1):  # step 0 warms up
        rows = np.arange(step * batch, (step + 1) * batch)
        histories = history_codes(sequences, rows, item_codes, history_len)
        started = time.perf_counter()
        encoded = encoder.encode(user_codes[rows], histories, "train", rng)
        encoded = {k: v.to(device) for k, v in encoded.items()}
        targets = torch.as_tensor([sequences[r][-1] for r in rows], device=device)
        negatives = torch.as_tensor(rng.integers(0, N_ITEMS, size=(batch, 1)), device=device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            z = model(encoded["input_ids"], encoded["attention_mask"])
        loss, _ = item_table_loss(z, targets, negatives, item_vectors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            seconds += time.perf_counter() - started
    model.eval()
    return {"batch": batch, "steps": steps, "samples_per_s": batch * steps / seconds, "precision": str(amp or "fp32")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["minilm"])
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--users", type=int, default=1024, help="users timed per configuration")
    parser.add_argument("--history", type=int, default=20, help="H, history items in a prompt")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TOKENREC_HOME", "var")))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", help="write docs/benchmarks/<name>.json")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    results: list[dict[str, Any]] = []
    for name in args.backbones:
        model = build_model(name, args.home, device)
        for prompt in args.prompts:
            for dtype in args.dtypes:
                for batch in args.batches:
                    row = {"backbone": name, "device": device.type,
                           **time_inference(model, prompt, dtype, batch, args.users, args.history, device)}
                    print(json.dumps(row), flush=True)
                    results.append(row)
        if args.train_steps:
            row = {"backbone": name, "device": device.type, "training": True,
                   **time_training(model, args.train_batch, args.train_steps, args.history, device)}
            print(json.dumps(row), flush=True)
            results.append(row)
    report = {"history_len": args.history, "threads": torch.get_num_threads(), "results": results,
              "load_average": os.getloadavg()}
    if args.name:
        command = " ".join(["python -m tokenrec.bench.llm_speed", *(argv or sys.argv[1:])])
        write_result(args.name, report, command=command)
    else:
        print(json.dumps({**report, "machine": machine()}, indent=2))


if __name__ == "__main__":
    main()
