"""Residual-quantized VAE tokenizer, the "RQ-VAE" ablation of TokenRec (Table VI).

Paper: Lee et al., "Autoregressive Image Generation using Residual Quantization" (CVPR 2022), in the form used
for semantic IDs by TIGER (Rajput et al., NeurIPS 2023). One encoder maps x to z in R^{d_c}; K codebooks
quantize successive residuals: ``r_0 = z``, ``w_k = argmin_l ||r_{k-1} - c^k_l||``, ``r_k = r_{k-1} - c^k_{w_k}``;
the decoder reads ``z_q = sum_k c^k_{w_k}`` through the straight-through estimator. Loss:
``||x - r||^2 + sum_k ||sg[r_{k-1}] - c^k_{w_k}||^2 + beta * sum_k ||r_{k-1} - sg[c^k_{w_k}]||^2``.
Early levels carry coarse, later levels fine information (the MQ-Tokenizer's levels are parallel instead).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokenrec.models.quantizer import Tokenizer, TokenizerOutput, mlp, nearest_codeword, vq_output


class RQVAE(Tokenizer):
    """One encoder, K residual codebooks, one decoder.

    Args:
        input_dim: D.
        num_levels: K, residual levels (tokens per entity).
        codebook_size: L, codewords per level.
        code_dim: d_c.
        hidden_dim: hidden width of the encoder and decoder MLPs.
        beta: weight of the commitment term.
    """

    kind = "rqvae"
    residual = True

    def __init__(
        self,
        input_dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        code_dim: int = 64,
        hidden_dim: int = 256,
        beta: float = 0.25,
    ) -> None:
        super().__init__(input_dim, num_levels, codebook_size, code_dim, level_book=range(num_levels))
        self.beta = beta
        self.hidden_dim = hidden_dim
        self.encoder = mlp(input_dim, hidden_dim, code_dim)
        self.decoder = mlp(code_dim, hidden_dim, input_dim)

    def _residual_quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residuals each level quantizes (B, K, d_c), codes (B, K) and codewords (B, K, d_c)."""
        residual = z  # (B, d_c)
        inputs, codes, words = [], [], []
        for level in range(self.num_levels):
            book = self.codebooks[level]  # (L, d_c)
            code = nearest_codeword(residual.unsqueeze(1), book.unsqueeze(0)).squeeze(1)  # (B,)
            word = book[code]  # (B, d_c)
            inputs.append(residual)
            codes.append(code)
            words.append(word)
            residual = residual - word.detach()  # each book is trained by its own level's terms only
        return torch.stack(inputs, 1), torch.stack(codes, 1), torch.stack(words, 1)

    def forward(self, x: Tensor) -> TokenizerOutput:
        z = self.encoder(x)  # (B, d_c)
        inputs, codes, words = self._residual_quantize(z)  # (B, K, d_c), (B, K), (B, K, d_c)
        z_q = words.sum(dim=1)  # (B, d_c)
        recon = self.decoder(z + (z_q - z).detach())  # straight-through: gradient of z_q goes to z
        return vq_output(x, recon, codes, inputs, words, self.beta)

    def quantize_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        inputs, codes, _ = self._residual_quantize(self.encoder(x))
        return inputs, codes

    def decode_codes(self, codes: Tensor) -> Tensor:
        return self.decoder(self.lookup(codes).sum(dim=1))  # (B, K, d_c) -> (B, d_c) -> (B, D)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hidden_dim": self.hidden_dim, "beta": self.beta}
