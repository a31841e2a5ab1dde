"""Batched greedy and beam-search decoding with a key/value cache.

Beam search follows fairseq's `SequenceGenerator`: at each step the 2·beam best continuations
of the live hypotheses are ranked by their summed log-probability; an end-of-sentence among the
first `beam` of them finishes a hypothesis, and the first `beam` others stay live. A sentence is
done when it has `beam` finished hypotheses. Length normalisation, as fairseq's: a finished
hypothesis y scores

    score(y) = Σ_t log p(y_t | y_<t, x) / |y|^α,

with |y| the number of generated tokens including the end-of-sentence token and α the length
penalty (`lenpen`, 1.0 by default: the mean token log-probability). The best-scoring finished
hypothesis is returned. At `max_len` the end-of-sentence token is forced.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdbench.adapters.translation.model import Transformer, reorder_cache


def max_length(src: Tensor, pad: int, a: float, b: int) -> int:
    """fairseq's max_len_a·|x| + max_len_b over the batch's longest source."""
    return int(a * int((src != pad).sum(1).max()) + b)


@torch.no_grad()
def greedy(model: Transformer, src: Tensor, bos: int, eos: int, max_len: int) -> tuple[list[list[int]], Tensor]:
    """Argmax decoding; returns token lists (without bos/eos) and their summed log-probabilities."""
    n = src.shape[0]
    memory, memory_mask, _ = model.encode(src)
    cache = model.new_cache()
    token = torch.full((n,), bos, dtype=torch.long, device=src.device)
    scores = torch.zeros(n, device=src.device)
    done = torch.zeros(n, dtype=torch.bool, device=src.device)
    out: list[list[int]] = [[] for _ in range(n)]
    for t in range(max_len):
        logp = model.step(token, t, memory, memory_mask, cache)
        if t == max_len - 1:
            logp = _force(logp, eos)
        best, token = logp.max(-1)
        scores += torch.where(done, torch.zeros_like(best), best)
        for i in torch.nonzero(~done & (token != eos)).flatten().tolist():
            out[i].append(int(token[i]))
        done |= token == eos
        if bool(done.all()):
            break
    return out, scores


def _force(logp: Tensor, eos: int) -> Tensor:
    forced = torch.full_like(logp, float("-inf"))
    forced[:, eos] = logp[:, eos]
    return forced


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, bos: int, eos: int, max_len: int, beam: int = 5,
                lenpen: float = 1.0) -> tuple[list[list[int]], Tensor]:
    """Batched beam search; returns the best hypothesis per sentence (tokens without bos/eos)
    and its length-normalised score (module docstring)."""
    n, device = src.shape[0], src.device
    memory, memory_mask, _ = model.encode(src)
    rows = torch.arange(n, device=device).repeat_interleave(beam)  # (n·beam,) sentence of each row
    memory, memory_mask = memory[rows], memory_mask[rows]
    cache = model.new_cache()
    tokens = torch.full((n * beam, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(n, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand the first one only
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(max_len):
        logp = model.step(tokens[:, -1], t, memory, memory_mask, cache)  # (n·beam, V)
        if t == max_len - 1:
            logp = _force(logp, eos)
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(n, beam * vocab)
        cand_scores, cand = total.topk(min(2 * beam, beam * vocab), dim=-1)  # (n, 2·beam)
        cand_beam, cand_token = cand // vocab, cand % vocab
        keep_beam, keep_token = [[0] * beam for _ in range(n)], [[eos] * beam for _ in range(n)]
        new_scores = [[float("-inf")] * beam for _ in range(n)]
        c_scores, c_beams, c_tokens = cand_scores.tolist(), cand_beam.tolist(), cand_token.tolist()
        for i in range(n):
            if done[i]:
                continue
            live = 0
            for j, (s, b, tok) in enumerate(zip(c_scores[i], c_beams[i], c_tokens[i], strict=True)):
                if s == float("-inf"):
                    break
                if tok == eos:
                    if j < beam and len(finished[i]) < beam:
                        hyp = tokens[i * beam + b, 1:].tolist()
                        finished[i].append((s / (t + 1) ** lenpen, hyp))
                elif live < beam:
                    keep_beam[i][live], keep_token[i][live], new_scores[i][live] = b, tok, s
                    live += 1
            done[i] = len(finished[i]) >= beam or live == 0
        if all(done):
            break
        index = (torch.arange(n, device=device)[:, None] * beam
                 + torch.tensor(keep_beam, device=device)).view(-1)
        reorder_cache(cache, index)
        tokens = torch.cat([tokens[index], torch.tensor(keep_token, device=device).view(-1, 1)], dim=1)
        scores = torch.tensor(new_scores, device=device)
    best = [max(f, key=lambda h: h[0]) for f in finished]
    return [h for _, h in best], torch.tensor([s for s, _ in best])
