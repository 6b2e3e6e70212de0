"""Plain VQ-VAE tokenizer, the "VQ-VAE" ablation of TokenRec (Table VI).

Paper: van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation Learning" (NeurIPS 2017), used as
an ID tokenizer as in PAPER.md section 3 (ablations). As in the original, one encoder maps x to a small grid of
latents, here K latent vectors of size d_c, and every latent is quantized with ONE shared codebook of L
codewords; the decoder reads the concatenated codewords. No masking, no K parallel encoders, no averaging.
Loss: ``||x - r||^2 + sum_k ||sg[z_k] - e_{w_k}||^2 + beta * sum_k ||z_k - sg[e_{w_k}]||^2`` with the
straight-through estimator. K = 1 gives the textbook single-vector VQ-VAE.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tokenrec.models.quantizer import Tokenizer, TokenizerOutput, mlp, nearest_codeword, vq_output


class VQVAE(Tokenizer):
    """One encoder emitting K latents, one shared codebook, a decoder of the concatenated codewords.

    Args:
        input_dim: D.
        num_levels: K, latents (and tokens) per entity.
        codebook_size: L, codewords of the shared book.
        code_dim: d_c.
        hidden_dim: hidden width of the encoder and decoder MLPs.
        beta: weight of the commitment term.
    """

    kind = "vqvae"

    def __init__(
        self,
        input_dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        code_dim: int = 64,
        hidden_dim: int = 256,
        beta: float = 0.25,
    ) -> None:
        super().__init__(input_dim, num_levels, codebook_size, code_dim, level_book=[0] * num_levels)
        self.beta = beta
        self.hidden_dim = hidden_dim
        self.encoder = mlp(input_dim, hidden_dim, num_levels * code_dim)
        self.decoder = mlp(num_levels * code_dim, hidden_dim, input_dim)

    def latents(self, x: Tensor) -> Tensor:
        """The encoder's K latents of ``x`` (B, D) -> (B, K, d_c)."""
        return self.encoder(x).view(x.shape[0], self.num_levels, self.code_dim)  # (B, K, d_c)

    def _shared_books(self) -> Tensor:
        return self.codebooks.expand(self.num_levels, -1, -1)  # (K, L, d_c), a view of the one book

    def forward(self, x: Tensor) -> TokenizerOutput:
        latents = self.latents(x)  # (B, K, d_c)
        codes = nearest_codeword(latents, self._shared_books())  # (B, K)
        quantized = self.lookup(codes)  # (B, K, d_c)
        straight_through = latents + (quantized - latents).detach()
        recon = self.decoder(straight_through.flatten(1))  # (B, K * d_c) -> (B, D)
        return vq_output(x, recon, codes, latents, quantized, self.beta)

    def quantize_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        latents = self.latents(x)
        return latents, nearest_codeword(latents, self._shared_books())

    def decode_codes(self, codes: Tensor) -> Tensor:
        return self.decoder(self.lookup(codes).flatten(1))  # (B, K, d_c) -> (B, K * d_c) -> (B, D)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hidden_dim": self.hidden_dim, "beta": self.beta}
