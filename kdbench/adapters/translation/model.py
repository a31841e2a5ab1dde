"""A Transformer encoder-decoder (Vaswani et al., 2017) in fairseq's layout: sinusoidal positions,
embeddings scaled by √d, post-norm (fairseq's default) or pre-norm (`normalize_before`), one
embedding matrix shared by source, target and the output projection (a joint vocabulary).

For distillation it exposes the q, k, v of every encoder self-attention layer and, on demand,
token logits from every decoder layer through the shared output projection (GO-LSD's per-layer
heads). Decoding keeps a key/value cache per decoder layer (see `decode.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Cache = dict[str, Tensor]
QKV = tuple[Tensor, Tensor, Tensor]
NORMS = ("post", "pre")


@dataclass
class Seq2SeqOutput:
    logits: Tensor  # (B, T, V) final decoder layer
    layer_logits: list[Tensor] = field(default_factory=list)  # per decoder layer, earliest first
    attentions: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


def sinusoidal(positions: int, dim: int, offset: int = 0) -> Tensor:
    """(positions, dim) sinusoidal position embeddings (sin on the first half, cos on the second,
    as fairseq's SinusoidalPositionalEmbedding)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(offset, offset + positions, dtype=torch.float32)[:, None] * freq[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model dim {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x: Tensor) -> Tensor:  # (B, T, D) → (B, A, T, D/A)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor | None = None, mask: Tensor | None = None,
                cache: Cache | None = None, static: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Attend from x (B, T, D) to memory (self-attention when None).

        mask: bool broadcastable to (B, A, T, S), True where a query may attend a key.
        cache: a decoder step's key/value store; `static` keys (cross-attention) are computed
        once, self-attention keys are appended to.
        """
        q = self._split(self.q(x))
        source = x if memory is None else memory
        if cache is not None and static and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = self._split(self.k(source)), self._split(self.v(source))
            if cache is not None:
                if not static and "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(2)), (q, k, v)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class Block(nn.Module):
    """One encoder (self, ffn) or decoder (self, cross, ffn) layer with residual sublayers."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attn_dropout: float,
                 cross: bool, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn = Attention(dim, heads, attn_dropout)
        self.cross_attn = Attention(dim, heads, attn_dropout) if cross else None
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3 if cross else 2))
        self.drop = nn.Dropout(dropout)

    def _sub(self, i: int, x: Tensor, fn: object) -> Tensor:
        norm = self.norms[i]
        y = fn(norm(x) if self.pre_norm else x)  # type: ignore[operator]
        x = x + self.drop(y)
        return x if self.pre_norm else norm(x)

    def forward(self, x: Tensor, self_mask: Tensor | None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None, cache: dict[str, Cache] | None = None,
                ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        qkv: list[tuple[Tensor, Tensor, Tensor]] = []

        def attend(h: Tensor) -> Tensor:
            y, parts = self.self_attn(h, mask=self_mask, cache=None if cache is None else cache["self"])
            qkv.append(parts)
            return y

        x = self._sub(0, x, attend)
        if self.cross_attn is not None:
            cross = self.cross_attn
            x = self._sub(1, x, lambda h: cross(h, memory, memory_mask,
                                                None if cache is None else cache["cross"], static=True)[0])
        x = self._sub(len(self.norms) - 1, x, self.ffn)
        return x, qkv[0]


class Transformer(nn.Module):
    """Encoder-decoder with a shared embedding / output projection over a joint vocabulary."""

    def __init__(self, vocab: int, dim: int = 256, heads: int = 4, ffn: int = 1024,
                 encoder_layers: int = 3, decoder_layers: int = 3, dropout: float = 0.1,
                 attention_dropout: float = 0.0, norm: str = "post", pad: int = 0,
                 max_positions: int = 1024) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r}; valid: {', '.join(NORMS)}")
        pre = norm == "pre"
        self.dim, self.pad, self.heads = dim, pad, heads
        self.embed = nn.Embedding(vocab, dim, padding_idx=pad)
        nn.init.normal_(self.embed.weight, 0.0, dim**-0.5)
        with torch.no_grad():
            self.embed.weight[pad].zero_()
        self.register_buffer("positions", sinusoidal(max_positions, dim), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(Block(dim, heads, ffn, dropout, attention_dropout, False, pre)
                                     for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(Block(dim, heads, ffn, dropout, attention_dropout, True, pre)
                                     for _ in range(decoder_layers))
        self.encoder_norm = nn.LayerNorm(dim) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(dim) if pre else nn.Identity()

    positions: Tensor

    def _embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.dim) + self.positions[offset:offset + tokens.shape[1]]
        return self.drop(x)

    def encode(self, src: Tensor, keep: bool = False) -> tuple[Tensor, Tensor, dict[str, QKV]]:
        """(memory (B, S, D), key mask (B, 1, 1, S), {encoder.i: (q, k, v)} when `keep`)."""
        valid = src != self.pad
        mask = valid[:, None, None, :]
        x = self._embed(src)
        attentions = {}
        for i, layer in enumerate(self.encoder):
            x, qkv = layer(x, mask)
            if keep:  # padded positions zeroed: MiniLM reads the padding from them
                attentions[f"encoder.{i}"] = tuple(t * valid[:, None, :, None] for t in qkv)
        return self.encoder_norm(x), mask, attentions  # type: ignore[return-value]

    def project(self, h: Tensor) -> Tensor:
        """Token logits through the shared embedding matrix."""
        return F.linear(self.decoder_norm(h), self.embed.weight)

    def forward(self, src: Tensor | tuple[Tensor, Tensor], tgt_in: Tensor | None = None,
                layers: bool = False, attentions: bool = False) -> Seq2SeqOutput:
        """Teacher-forced logits for `tgt_in` (B, T) given `src` (B, S) (or one (src, tgt_in) pair)."""
        if isinstance(src, tuple):
            src, tgt_in = src
        assert tgt_in is not None
        memory, memory_mask, attn = self.encode(src, keep=attentions)
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=src.device).tril()
        x = self._embed(tgt_in)
        hidden = []
        for layer in self.decoder:
            x, _ = layer(x, causal, memory, memory_mask)
            hidden.append(x)
        logits = self.project(x)
        per_layer = [self.project(h) for h in hidden[:-1]] + [logits] if layers else []
        return Seq2SeqOutput(logits, per_layer, attn)

    def new_cache(self) -> list[dict[str, Cache]]:
        return [{"self": {}, "cross": {}} for _ in self.decoder]

    def step(self, token: Tensor, position: int, memory: Tensor, memory_mask: Tensor,
             cache: list[dict[str, Cache]]) -> Tensor:
        """Log-probabilities (N, V) of the next token given the previous one (N,) and the cache."""
        x = self._embed(token[:, None], offset=position)
        for layer, store in zip(self.decoder, cache, strict=True):
            x, _ = layer(x, None, memory, memory_mask, store)
        return F.log_softmax(self.project(x[:, 0]).float(), dim=-1)


def reorder_cache(cache: list[dict[str, Cache]], index: Tensor) -> None:
    """Select rows `index` of every cached key/value (beam reordering), in place."""
    for store in cache:
        for part in store.values():
            for key in list(part):
                part[key] = part[key].index_select(0, index)
