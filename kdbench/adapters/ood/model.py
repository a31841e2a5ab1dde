"""A small pre-LayerNorm Transformer encoder over characters for sentence classification.

Characters are embedded, optionally grouped into non-overlapping patches of `patch`
characters (a linear map of the concatenated embeddings, like a strided convolution: fewer
positions for long texts), given learned position embeddings, and passed through `depth`
blocks of multi-head self-attention (padded keys masked) and an MLP. The sentence vector is
the mean over valid positions of the final LayerNorm's output; a linear head classifies it.

Exposed for distillation: every block's q, k, v (B, heads, T, d), zero at padded positions
(padded keys are masked, so this changes nothing else); every block's output
mean-pooled over valid positions ("stage1".."stageN", (B, D), named like the classification
stages so feature-based methods' defaults carry over) and the pooled final vector
("embedding"); and, with `aux_heads`, a classifier on each earlier block's pooled output
(per-layer heads, LayerNorm then Linear).

`NgramBag` is fastText's supervised classifier (Joulin et al., "Bag of Tricks for Efficient Text
Classification", EACL 2017) over the n-grams of kdbench.adapters.ood.data: the mean embedding of
an utterance's word and character n-grams, then a linear head; its one feature is that mean
("embedding"), and it has no attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.adapters.ood.data import PAD
from kdbench.adapters.ood.data import bag as flat_bag


@dataclass
class EncoderOutput:
    logits: Tensor  # (B, K)
    aux_logits: list[Tensor] = field(default_factory=list)  # (B, K) per earlier block
    features: dict[str, Tensor] = field(default_factory=dict)  # (B, D) each
    attentions: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    mask: Tensor | None = None  # (B, T') bool, True at valid positions after patching


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) → (B, D) mean over valid positions."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class Block(nn.Module):
    """Pre-LN Transformer block that returns its attention inputs."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keep = mask[:, None, :, None].to(q.dtype)  # zero q, k, v at padding: minilm reads it there
        q, k, v = q * keep, k * keep, v * keep  # (B, H, T, d) each
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (B, H, T, T)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.drop(scores.softmax(-1))
        x = x + self.drop(self.proj((attn @ v).transpose(1, 2).reshape(b, t, d)))
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, (q, k, v)


TextInput = Tensor | tuple[Tensor, list[Tensor]]  # (B, T) ids, or (ids, each sample's n-gram ids)


class TextEncoder(nn.Module):
    """Character Transformer classifier (see the module docstring)."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, max_chars: int = 64, patch: int = 1, mlp_ratio: float = 2.0,
                 dropout: float = 0.1, aux_heads: bool = False) -> None:
        super().__init__()
        if depth < 1 or patch < 1:
            raise ValueError(f"depth and patch must be ≥ 1, got depth={depth}, patch={patch}")
        self.patch = patch
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.patch_proj = nn.Linear(patch * dim, dim) if patch > 1 else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(1, -(-max_chars // patch), dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        self.aux = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes)) for _ in range(depth - 1)
        ) if aux_heads else nn.ModuleList()

    def _stem(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids → (B, T', D) embeddings and (B, T') validity after patching."""
        mask = tokens != PAD
        if self.patch > 1:
            extra = -tokens.shape[1] % self.patch
            tokens = F.pad(tokens, (0, extra), value=PAD)
            mask = F.pad(mask, (0, extra), value=False)
            b, t = tokens.shape
            x = self.patch_proj(self.embed(tokens).view(b, t // self.patch, -1))
            mask = mask.view(b, t // self.patch, self.patch).any(-1)
        else:
            x = self.embed(tokens)
        if x.shape[1] > self.pos.shape[1]:
            raise ValueError(f"input of {x.shape[1]} positions exceeds max_chars/patch = {self.pos.shape[1]}")
        return x + self.pos[:, : x.shape[1]], mask

    def forward(self, tokens: TextInput) -> EncoderOutput:
        """(B, T) ids; given (ids, n-grams), it reads the ids only."""
        if isinstance(tokens, tuple):
            tokens = tokens[0]
        x, mask = self._stem(tokens)
        features: dict[str, Tensor] = {}
        attentions: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for i, block in enumerate(self.blocks):
            x, qkv = block(x, mask)
            attentions[f"layer{i}"] = qkv
            features[f"stage{i + 1}"] = masked_mean(x, mask)
        embedding = masked_mean(self.norm(x), mask)  # (B, D)
        features["embedding"] = embedding
        aux = [head(features[f"stage{i + 1}"]) for i, head in enumerate(self.aux)]
        return EncoderOutput(self.fc(embedding), aux, features, attentions, mask)


class NgramBag(nn.Module):
    """fastText's supervised classifier (see the module docstring): z = W·drop(mean_g E[g]) + b
    over the utterance's n-gram ids g (id 0, padding, is left out of the mean: an utterance
    without a known n-gram is the zero vector). torch's default initialisations."""

    def __init__(self, ngram_vocab: int, num_classes: int, dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if ngram_vocab < 2:
            raise ValueError(f"the n-gram vocabulary is empty ({ngram_vocab - 1} n-grams)")
        self.bag = nn.EmbeddingBag(ngram_vocab, dim, mode="mean", padding_idx=PAD)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: TextInput) -> EncoderOutput:
        """(ids, each sample's n-gram ids) → logits and the mean embedding."""
        if not isinstance(tokens, tuple):
            raise ValueError("NgramBag reads n-grams: pass (tokens, ngrams) (data.ngrams)")
        embedding = self.bag(*flat_bag(tokens[1]))  # (B, D), from the flat ids and each sample's offset
        return EncoderOutput(self.fc(self.drop(embedding)), features={"embedding": embedding})
