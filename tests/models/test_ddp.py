"""Data-parallel LLM4Rec training: two CPU processes (gloo, 127.0.0.1) started by torchrun end identical.

The test launches this file as the worker script: ``torchrun --nproc_per_node 2 test_ddp.py <folder>``. Each
rank trains a tiny backbone on synthetic data with the real loop (``train_llm`` with DDP, the process group
joined by the stage's :func:`start_distributed`) and saves its final weights; the test compares the ranks with
each other and with one process that sees the same global batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))

from tests.models.conftest import make_walks  # noqa: E402
from tokenrec.config import LlmConfig, TrainConfig  # noqa: E402
from tokenrec.llm.backbone import add_id_tokens, tiny_backbone  # noqa: E402
from tokenrec.models.llm4rec import LLM4Rec  # noqa: E402
from tokenrec.training.llm import Ranks, train_llm  # noqa: E402

pytestmark = pytest.mark.model

PER_RANK_BATCH, WORLD, K, L, DIM = 8, 2, 3, 8, 16


def setup(batch_size: int) -> tuple[LLM4Rec, object, object, dict[str, np.ndarray], LlmConfig, TrainConfig]:
    """The same model, data and settings in every process; dropout off so that batch splits are comparable."""
    data = make_walks(n_users=48, n_items=40, clusters=4, length=8)
    rng = np.random.default_rng(0)
    tables = {
        "user_codes": rng.integers(0, L, size=(data.n_users, K)),
        "item_codes": rng.integers(0, L, size=(data.n_items, K)),
        "item_vectors": rng.normal(size=(data.n_items, DIM)).astype(np.float32),
    }
    backbone = tiny_backbone("tiny-bert", seed=0)
    vocab = add_id_tokens(backbone, K, L, seed=0)
    torch.manual_seed(0)
    model = LLM4Rec(backbone, DIM, proj_hidden=32, proj_dropout=0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    cfg = LlmConfig(  # fp32: bf16 rounding would differ with the batch split
        batch_size=batch_size, max_epochs=2, history_len=4, samples_per_user=2, eval_batch_size=32, precision="fp32"
    )
    return model, vocab, data, tables, cfg, TrainConfig(device="cpu", seed=5, progress=False)


def worker(folder: Path) -> None:
    from tokenrec.tasks.train_llm import start_distributed

    torch.set_num_threads(1)
    ranks, device = start_distributed("cpu")
    model, vocab, data, tables, cfg, train = setup(PER_RANK_BATCH)
    result = train_llm(model, vocab, data, tables, cfg, train, device, [10, 20], folder / "out", ranks)
    torch.save(model.state_dict(), folder / f"rank{ranks.rank}.pt")
    (folder / f"rank{ranks.rank}.json").write_text(json.dumps(result.history))
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights_equal_to_one_process_on_the_same_batches(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__).resolve()), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    histories = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    same = [[{k: v for k, v in h.items() if "second" not in k} for h in history] for history in histories]
    assert same[0] == same[1]  # losses are averaged and validation gathered over the ranks: equal everywhere
    assert (tmp_path / "out" / "history.json").is_file()  # written by rank 0

    torch.set_num_threads(1)
    model, vocab, data, tables, cfg, train = setup(PER_RANK_BATCH * WORLD)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    single = train_llm(model, vocab, data, tables, cfg, train, torch.device("cpu"), [10, 20], None, Ranks())
    moved = False
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=2e-5, msg=key)
        moved |= key in start and not torch.equal(start[key], value)
    assert moved  # training changed the weights
    for one, both in zip(single.history, histories[0], strict=True):
        assert one["loss"] == pytest.approx(both["loss"], rel=1e-4)
        assert one["valid"] == pytest.approx(both["valid"], abs=1e-6)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
