"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
SIGIR 2020), the collaborative teacher of TokenRec (PAPER.md section 2, step 0).

Scope: the model only (no I/O, no training loop; see :mod:`tokenrec.training.gnn`). Ego embeddings
``E0 = [P; Q]`` of users and items are propagated over the symmetric-normalised bipartite graph built from the
*training* edges only,

    A_hat = D^-1/2 A D^-1/2,     E_{l+1} = A_hat E_l,     E = (E_0 + E_1 + ... + E_L) / (L + 1)   (eq. 8-9)

and a (user, item) pair scores ``<e_u, e_i>``. The propagated embedding is the default output; the ego
tables are exposed too (the authors' TokenRec code used them).

Speed without changing the model. ``E = M E_0`` with ``M = (I + A_hat + ... + A_hat^L) / (L + 1)``, a
polynomial in a symmetric matrix, hence symmetric: the gradient of a loss through ``M`` is ``M G``, computed by
Horner's rule. Only the rows ``S`` of the batch (users, positives, negatives) enter the BPR loss, so
:class:`_PropagateRows` computes the last layer on ``S`` only and starts the backward pass with the cheap sparse
product ``A_hat[S, :]^T G_S``: per batch that is 2L - 2 full sparse products plus two on ``|S|`` rows, instead
of 2L, with exactly the same numbers. On the CPU the products use SciPy's CSR kernel (several times faster
than torch's sparse CSR there), split over threads by rows; on a GPU, torch's sparse CSR.

Opt-in approximation (``refresh_every > 1``, default off): for graphs too large to propagate exactly per batch
on a CPU, layers 2..L of the batch rows are read from a cache refreshed every ``refresh_every`` batches and
pass no gradient; layers 0 and 1 stay exact. Inference is always exact.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class BatchEmbeddings(NamedTuple):
    """A batch's final embeddings (scored) and ego embeddings (L2-regularised), each (B, d)."""

    user: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    user_ego: torch.Tensor
    pos_ego: torch.Tensor
    neg_ego: torch.Tensor


def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2`` of the user-item graph, float32 CSR of shape (n_users + n_items,) * 2.

    Nodes ``0 .. n_users - 1`` are users, ``n_users + j`` is item ``j``. Repeated (user, item) pairs count once;
    isolated nodes keep an all-zero row.
    """
    n = n_users + n_items
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    adj = sp.coo_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n)).tocsr()
    adj.sum_duplicates()
    adj.data[:] = 1.0
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros(n, dtype=np.float32)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    norm = sp.diags(inv_sqrt) @ adj @ sp.diags(inv_sqrt)
    norm = sp.csr_matrix(norm, dtype=np.float32)
    norm.sort_indices()
    return norm


class GraphOperator:
    """Products with a fixed symmetric sparse matrix on the device of the operands.

    On the CPU the rows are cut into ``threads`` blocks of equal non-zero count, multiplied in parallel
    (SciPy releases the GIL), each block written to its own rows of the output: the same sums in the same
    order whatever the thread count, hence bit-identical results.
    """

    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str = "cpu", threads: int = 1) -> None:
        self.matrix = matrix
        self.device = torch.device(device)
        self.n = matrix.shape[0]
        self._torch: torch.Tensor | None = None
        self._pool: ThreadPoolExecutor | None = None
        if self.device.type != "cpu":
            self._torch = torch.sparse_csr_tensor(
                torch.from_numpy(matrix.indptr.astype(np.int64)),
                torch.from_numpy(matrix.indices.astype(np.int64)),
                torch.from_numpy(matrix.data),
                size=matrix.shape,
            ).to(self.device)
            return
        self._row_nnz = np.diff(matrix.indptr)  # (n,) non-zeros per row
        cuts = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, max(1, threads) + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], cuts, [self.n]]))
        self._blocks = [(int(a), int(b), matrix[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if len(self._blocks) > 1:
            self._pool = ThreadPoolExecutor(len(self._blocks), thread_name_prefix="spmm")

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``A_hat @ x`` for x (n, d)."""
        if self._torch is not None:
            return self._torch @ x
        dense = x.detach().numpy()
        if self._pool is None:
            return torch.from_numpy(self.matrix @ dense)
        out = np.empty((self.n, dense.shape[1]), dtype=np.float32)

        def block(job: tuple[int, int, sp.csr_matrix]) -> None:
            start, stop, rows = job
            out[start:stop] = rows @ dense

        list(self._pool.map(block, self._blocks))
        return torch.from_numpy(out)

    def rows_matmul(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        """``A_hat[rows, :] @ x`` (|S|, d) and a handle for :meth:`rows_transpose_matmul`.

        When the rows hold more than half of the non-zeros (popular items in a batch of a power-law graph), or
        on a GPU, one full product is cheaper than slicing; the sums, and so the results, are the same.
        """
        if self._torch is None:
            picked = rows.numpy()
            if 2 * int(self._row_nnz[picked].sum()) <= self.matrix.nnz:
                sub = self.matrix[picked]
                return torch.from_numpy(sub @ x.detach().numpy()), sub
        return self.matmul(x)[rows], None

    def rows_transpose_matmul(self, rows: torch.Tensor, g: torch.Tensor, handle: object) -> torch.Tensor:
        """``A_hat[rows, :]^T @ g`` (n, d) for g (|S|, d); equals ``A_hat @ scatter(g)`` by symmetry."""
        if handle is not None:
            return torch.from_numpy(np.asarray(handle.T @ g.numpy(), dtype=np.float32))
        full = torch.zeros(self.n, g.shape[1], device=g.device, dtype=g.dtype)
        full[rows] = g
        return self.matmul(full)


class _PropagateRows(torch.autograd.Function):
    """Rows ``S`` of ``M E_0`` and of ``E_0``; backward returns ``M[:, S] G_S + scatter(G0_S)``.

    Returning the ego rows from the same function lets the L2 term share the one dense gradient buffer.
    With ``stale`` (the approximate mode), layers 2..L are read from that cache and get no gradient; layers 0
    and 1 stay exact and cost only products with ``A_hat[S, :]``.
    """

    @staticmethod
    def forward(
        ctx,
        ego: torch.Tensor,
        rows: torch.Tensor,
        graph: GraphOperator,
        layers: int,
        stale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ego_rows = ego[rows]  # (|S|, d)
        total = ego_rows.clone()
        exact_layers = 1 if stale is not None else layers
        current = ego
        for _ in range(exact_layers - 1):
            current = graph.matmul(current)  # (n, d)
            total += current[rows]
        handle = None
        if exact_layers > 0:
            last, handle = graph.rows_matmul(rows, current)
            total += last
        if stale is not None:
            total += stale[rows]
        ctx.rows, ctx.graph, ctx.layers, ctx.exact_layers, ctx.handle = (
            rows,
            graph,
            layers,
            exact_layers,
            handle,
        )
        ctx.shape = ego.shape
        return total / (layers + 1), ego_rows

    @staticmethod
    def backward(
        ctx, grad: torch.Tensor, grad_ego: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        rows, graph = ctx.rows, ctx.graph
        grad = (grad / (ctx.layers + 1)).contiguous()  # scale the |S| rows, not the (n, d) result
        if ctx.exact_layers == 0:
            acc = torch.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)  # (n, d)
            acc.index_add_(0, rows, grad)
        else:
            # Horner: M G = G' + A(G' + A(... (G' + A G'))) with G' = G / (L + 1); G is zero outside the rows S,
            # so "+ G'" is an index_add on S and the innermost A G' is a product with A[S, :]^T only.
            acc = graph.rows_transpose_matmul(rows, grad, ctx.handle)  # (n, d)
            acc.index_add_(0, rows, grad)
            for _ in range(ctx.exact_layers - 1):
                acc = graph.matmul(acc)
                acc.index_add_(0, rows, grad)
        acc.index_add_(0, rows, grad_ego)
        return acc, None, None, None, None


class LightGCN(nn.Module):
    """LightGCN over a fixed training graph.

    Args:
        n_users, n_items: table sizes.
        dim: embedding size d.
        layers: number of propagation layers L (0 gives matrix factorisation).
        graph: the normalised adjacency of the training edges (:func:`normalized_adjacency`).
        init_std: standard deviation of the normal initialisation of the ego tables.
        threads: CPU threads for the sparse products (ignored on a GPU).
        refresh_every: 1 (default) trains the exact model. ``k > 1`` is an opt-in approximation for very
            large graphs on a CPU: layers 2..L of the batch rows come from a cache of ``A_hat^l E_0`` that the
            trainer refreshes every ``k`` batches (:meth:`refresh`) and pass no gradient; layers 0 and 1 stay
            exact. Inference (:meth:`propagate`, eval mode) is always exact.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        layers: int,
        graph: sp.csr_matrix,
        init_std: float = 0.1,
        threads: int = 1,
        refresh_every: int = 1,
    ) -> None:
        super().__init__()
        if graph.shape != (n_users + n_items, n_users + n_items):
            raise ValueError(f"graph is {graph.shape}, expected ({n_users + n_items},) * 2 for users + items")
        self.n_users, self.n_items, self.layers = n_users, n_items, layers
        # One (n_users + n_items, d) table E_0, users first: one dense gradient and one Adam update per step.
        self.ego = nn.Parameter(torch.randn(n_users + n_items, dim) * init_std)
        self.graph_matrix = graph
        self.threads = threads
        self.refresh_every = refresh_every
        self._graph: GraphOperator | None = None
        self._stale: torch.Tensor | None = None  # (n, d) sum of layers 2..L, approximate mode only

    def graph(self) -> GraphOperator:
        if self._graph is None or self._graph.device != self.ego.device:
            self._graph = GraphOperator(self.graph_matrix, self.ego.device, self.threads)
        return self._graph

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> BatchEmbeddings:
        """Propagated and ego embeddings (B, d) of the batch's users, positive and negative items."""
        nodes = torch.cat([users, pos + self.n_users, neg + self.n_users])  # (3B,)
        unique, inverse = torch.unique(nodes, return_inverse=True)  # sorted, so CSR row slicing is cheap
        stale = None
        if self.training and self.refresh_every > 1 and self.layers > 1:
            if self._stale is None:
                self.refresh()
            stale = self._stale
        final, ego = _PropagateRows.apply(self.ego, unique, self.graph(), self.layers, stale)  # (|S|, d) each
        u, p, n = final[inverse].chunk(3)
        u0, p0, n0 = ego[inverse].chunk(3)
        return BatchEmbeddings(u, p, n, u0, p0, n0)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the cache of layers 2..L (approximate mode; a no-op when training exactly)."""
        if self.refresh_every <= 1 or self.layers <= 1:
            return
        graph = self.graph()
        current = graph.matmul(self.ego.detach())
        stale = torch.zeros_like(current)
        for _ in range(self.layers - 1):
            current = graph.matmul(current)
            stale += current
        self._stale = stale

    @torch.no_grad()
    def ego_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 tables (n_users, d) and (n_items, d)."""
        return self.ego[: self.n_users].clone(), self.ego[self.n_users :].clone()

    @torch.no_grad()
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated tables (n_users, d) and (n_items, d): the mean of the L + 1 layer outputs."""
        graph = self.graph()
        current = self.ego.detach()
        total = current.clone()
        for _ in range(self.layers):
            current = graph.matmul(current)
            total += current
        total /= self.layers + 1
        return total[: self.n_users], total[self.n_users :]
