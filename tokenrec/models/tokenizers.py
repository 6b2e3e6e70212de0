"""The ID tokenizer that ``cfg.tokenizer.kind`` names: the MQ-Tokenizer of TokenRec or an ablation of Table VI.

=========  ======================================================================  =======================
kind       what                                                                    module
=========  ======================================================================  =======================
mq         masking, K parallel MLP encoders, K codebooks, decoder of the mean       mq_tokenizer
single     the same with one encoder and one codebook ("w/o K-way", K = 1)          mq_tokenizer
vqvae      plain VQ-VAE: one encoder emitting K latents, one shared codebook       vqvae
rqvae      residual quantization: K codebooks quantize successive residuals        rqvae
kmeans     residual k-means on the raw embeddings, nothing trained                 kmeans_tokenizer
=========  ======================================================================  =======================

"Without masking" is ``mq`` with ``mask_prob = 0``. The interface they share is
:class:`tokenrec.models.quantizer.Tokenizer`; this module is the only one that imports them all.
"""

from __future__ import annotations

from tokenrec.config import TOKENIZER_KINDS, TokenizerConfig
from tokenrec.models.kmeans_tokenizer import KMeansTokenizer
from tokenrec.models.mq_tokenizer import MQTokenizer
from tokenrec.models.quantizer import Tokenizer
from tokenrec.models.rqvae import RQVAE
from tokenrec.models.vqvae import VQVAE


def build_tokenizer(cfg: TokenizerConfig, input_dim: int) -> Tokenizer:
    """The tokenizer that ``cfg.kind`` names, for embeddings of size ``input_dim``."""
    common = dict(input_dim=input_dim, codebook_size=cfg.codebook_size)
    if cfg.kind == "kmeans":
        return KMeansTokenizer(num_levels=cfg.codebooks, **common)
    common.update(code_dim=cfg.code_dim, hidden_dim=cfg.hidden_dim, beta=cfg.beta)
    if cfg.kind == "mq":
        return MQTokenizer(num_levels=cfg.codebooks, mask_prob=cfg.mask_prob, **common)
    if cfg.kind == "single":
        return MQTokenizer(num_levels=1, mask_prob=cfg.mask_prob, kind="single", **common)
    if cfg.kind == "vqvae":
        return VQVAE(num_levels=cfg.codebooks, **common)
    if cfg.kind == "rqvae":
        return RQVAE(num_levels=cfg.codebooks, **common)
    raise ValueError(f"tokenizer.kind must be one of {', '.join(TOKENIZER_KINDS)}; got {cfg.kind!r}")
