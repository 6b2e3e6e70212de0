"""MQ-Tokenizer: the masked, K-way vector-quantized ID tokenizer of TokenRec.

Paper: Qu, Fan, Zhao, Li, "TokenRec: Learning to Tokenize ID for LLM-based Generative Recommendations"
(arXiv 2406.10450), section on the MQ-Tokenizer; PAPER.md section 2 of this repository. One instance tokenizes
users, another items. For an embedding x in R^D (a LightGCN row):

1. masking, training only: ``x' = x * Bernoulli(1 - rho)`` per element (no rescaling, as in the paper);
2. K-way encoding: ``a^k = MLP^k(x')``; token ``w^k = argmin_l ||a^k - c^k_l||^2``;
3. K-to-1 decoding of the mean codeword: ``r = MLP_dec((1/K) sum_k c^k_{w^k})``;
4. loss ``||x - r||^2 + sum_k ||sg[a^k] - c^k_{w^k}||^2 + beta * sum_k ||a^k - sg[c^k_{w^k}]||^2``.

The straight-through estimator ``a + sg[c - a]`` carries the reconstruction gradient into every encoder (the
authors' public code loses it, and drops the commitment term, so their encoders never learn; PAPER.md
section 4). ``kind="single"`` with ``num_levels=1`` is the paper's "w/o K-way" ablation. k-means
initialisation and dead-code re-seeding come from :class:`tokenrec.models.quantizer.Tokenizer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tokenrec.models.quantizer import Tokenizer, TokenizerOutput, mlp, nearest_codeword, vq_output


def mask_elements(x: Tensor, mask_prob: float) -> Tensor:
    """``x * Bernoulli(1 - mask_prob)`` element-wise; a new tensor, ``x`` itself is left untouched."""
    if mask_prob <= 0.0:
        return x
    keep = torch.rand_like(x) >= mask_prob  # (B, D) True with probability 1 - rho
    return x * keep


class MQTokenizer(Tokenizer):
    """Masked K-way VQ tokenizer (PAPER.md section 2).

    Args:
        input_dim: D, the embedding size.
        num_levels: K, parallel encoders and codebooks (tokens per entity).
        codebook_size: L, codewords per codebook.
        code_dim: d_c.
        hidden_dim: hidden width of the encoder and decoder MLPs.
        mask_prob: rho, the probability of zeroing an input element in training (0 disables masking).
        beta: weight of the commitment term.
        kind: the name reported in statistics (``mq``, or ``single`` for the one-codebook ablation).
    """

    def __init__(
        self,
        input_dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        code_dim: int = 64,
        hidden_dim: int = 256,
        mask_prob: float = 0.2,
        beta: float = 0.25,
        kind: str = "mq",
    ) -> None:
        super().__init__(input_dim, num_levels, codebook_size, code_dim, level_book=range(num_levels))
        self.kind = kind
        self.mask_prob = mask_prob
        self.beta = beta
        self.hidden_dim = hidden_dim
        self.encoders = nn.ModuleList(mlp(input_dim, hidden_dim, code_dim) for _ in range(num_levels))
        self.decoder = mlp(code_dim, hidden_dim, input_dim)

    def latents(self, x: Tensor) -> Tensor:
        """Encoder outputs a^k of (already masked or not) inputs (B, D) -> (B, K, d_c)."""
        return torch.stack([encoder(x) for encoder in self.encoders], dim=1)

    def forward(self, x: Tensor) -> TokenizerOutput:
        x_in = mask_elements(x, self.mask_prob) if self.training else x  # (B, D)
        latents = self.latents(x_in)  # (B, K, d_c)
        codes = nearest_codeword(latents, self.codebooks)  # (B, K)
        quantized = self.lookup(codes)  # (B, K, d_c), differentiable w.r.t. the codebooks
        straight_through = latents + (quantized - latents).detach()  # value = codewords, gradient -> encoders
        recon = self.decoder(straight_through.mean(dim=1))  # (B, D)
        return vq_output(x, recon, codes, latents, quantized, self.beta)

    def quantize_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        latents = self.latents(x)  # (B, K, d_c)
        return latents, nearest_codeword(latents, self.codebooks)

    def decode_codes(self, codes: Tensor) -> Tensor:
        return self.decoder(self.lookup(codes).mean(dim=1))  # (B, K, d_c) -> (B, d_c) -> (B, D)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "hidden_dim": self.hidden_dim,
            "mask_prob": self.mask_prob,
            "beta": self.beta,
        }
