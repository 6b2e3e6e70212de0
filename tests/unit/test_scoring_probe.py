"""The scoring probe's non-learned reference (tokenrec/bench/scoring_probe.py)."""

from __future__ import annotations

import numpy as np
import torch

from tokenrec.bench.scoring_probe import last_item_vectors


def test_last_item_vectors_take_each_user_s_most_recent_item_and_zeros_for_an_empty_history():
    items = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # (n_items, d)
    sequences = [np.array([2, 0, 3]), np.array([], dtype=np.int64), np.array([1])]
    out = last_item_vectors(items, sequences)
    torch.testing.assert_close(out, torch.stack([items[3], torch.zeros(3), items[1]]))
