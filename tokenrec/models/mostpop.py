"""Most-popular baseline: every user gets the items with the most training interactions.

Scope: scoring only. It is the floor every personalised model must clear (PAPER.md section 5 asks for it
next to every TokenRec result). Ties go to the lower item index, like every ranking in :mod:`tokenrec.evaluation.metrics`.
"""

from __future__ import annotations

import numpy as np
import torch


class MostPopular:
    """Scores each item by its training popularity, the same for every user.

    Args:
        popularity: (n_items,) training interaction count per item.
    """

    def __init__(self, popularity: np.ndarray) -> None:
        self.popularity = torch.as_tensor(np.asarray(popularity, dtype=np.float32))  # (n_items,)

    def score(self, users: np.ndarray, split: int) -> torch.Tensor:
        """(B, n_items) scores; ``split`` is ignored (training popularity only, no leakage)."""
        return self.popularity[None, :].expand(len(users), -1)
