"""k-means tokenizer, the "K-Means" ablation of TokenRec (Table VI): codes without any learned network.

Residual k-means ("RQ-KMeans") on the raw embeddings: level 1 clusters x into L centroids, level k clusters the
residual left by levels 1..k-1, so an entity's K codes name a coarse-to-fine path and its reconstruction is the
sum of its K centroids. Nothing is trained by gradient descent: :meth:`Tokenizer.init_codebooks` (k-means, level
by level) is the whole fit. Codewords live in the input space, so d_c = D.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenrec.models.quantizer import Tokenizer, TokenizerOutput, nearest_codeword


class KMeansTokenizer(Tokenizer):
    """K levels of residual k-means over the input embeddings.

    Args:
        input_dim: D (also the codeword size).
        num_levels: K.
        codebook_size: L, centroids per level.
    """

    kind = "kmeans"
    trainable = False
    residual = True

    def __init__(self, input_dim: int, num_levels: int = 3, codebook_size: int = 256) -> None:
        super().__init__(input_dim, num_levels, codebook_size, input_dim, level_book=range(num_levels))
        self.codebooks.requires_grad_(False)

    def quantize_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        residual = x  # (B, D)
        inputs, codes = [], []
        for level in range(self.num_levels):
            book = self.codebooks[level]  # (L, D)
            code = nearest_codeword(residual.unsqueeze(1), book.unsqueeze(0)).squeeze(1)  # (B,)
            inputs.append(residual)
            codes.append(code)
            residual = residual - book[code]
        return torch.stack(inputs, 1), torch.stack(codes, 1)  # (B, K, D), (B, K)

    def forward(self, x: Tensor) -> TokenizerOutput:
        _, codes = self.quantize_eval(x)
        recon = self.decode_codes(codes)
        recon_loss = ((x - recon) ** 2).sum(-1).mean()
        zero = recon_loss.new_zeros(())
        return TokenizerOutput(recon, codes, recon_loss, recon_loss, zero, zero)

    def decode_codes(self, codes: Tensor) -> Tensor:
        return self.lookup(codes).sum(dim=1)  # (B, K, D) -> (B, D)
