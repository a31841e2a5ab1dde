"""Decoding: beam 1 is greedy; beam scores are length-normalised as documented; caching is exact."""

from __future__ import annotations

import pytest
import torch

from kdbench.adapters.translation.decode import beam_search, greedy
from kdbench.adapters.translation.model import Transformer

BOS, EOS, PAD = 2, 3, 0


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(vocab=12, dim=16, heads=2, ffn=32, encoder_layers=1, decoder_layers=2, dropout=0.0)
    with torch.no_grad():  # make EOS likely enough that hypotheses end at varied lengths
        model.embed.weight[EOS] *= 3
    return model.eval()


def _src() -> torch.Tensor:
    return torch.tensor([[5, 6, 7, 8, EOS], [9, 4, EOS, PAD, PAD], [6, 6, 6, 10, EOS]])


def _sequence_logprob(model: Transformer, src: torch.Tensor, hyp: list[int]) -> float:
    tgt_in = torch.tensor([[BOS, *hyp]])
    tgt_out = torch.tensor([[*hyp, EOS]])
    with torch.no_grad():
        logp = model(src[None], tgt_in).logits.log_softmax(-1)
    return float(logp.gather(-1, tgt_out[..., None]).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy(seed: int) -> None:
    model, src = _model(seed), _src()
    g, g_scores = greedy(model, src, BOS, EOS, max_len=9)
    b, b_scores = beam_search(model, src, BOS, EOS, max_len=9, beam=1, lenpen=0.0)
    assert g == b
    assert torch.allclose(g_scores, b_scores.to(g_scores.dtype), atol=1e-5)  # lenpen 0: summed log-probs


@pytest.mark.parametrize("lenpen", [0.0, 1.0, 2.0])
def test_beam_scores_are_length_normalised(lenpen: float) -> None:
    model, src = _model(), _src()
    hyps, scores = beam_search(model, src, BOS, EOS, max_len=9, beam=4, lenpen=lenpen)
    for row, hyp, score in zip(src, hyps, scores.tolist(), strict=True):
        row = row[: int((row != PAD).sum())]
        total = _sequence_logprob(model, row, hyp)  # teacher-forced, no cache
        assert score == pytest.approx(total / (len(hyp) + 1) ** lenpen, abs=1e-4)


def test_beam_finds_at_least_the_greedy_score() -> None:
    model, src = _model(3), _src()
    g, _ = greedy(model, src, BOS, EOS, max_len=9)
    _, b_scores = beam_search(model, src, BOS, EOS, max_len=9, beam=5, lenpen=1.0)
    for i, (gh, score) in enumerate(zip(g, b_scores.tolist(), strict=True)):
        row = src[i][: int((src[i] != PAD).sum())]
        assert score >= _sequence_logprob(model, row, gh) / (len(gh) + 1) - 1e-4


def test_max_len_forces_end() -> None:
    model = _model()
    with torch.no_grad():
        model.embed.weight[EOS] *= 0  # EOS never wins on its own
    hyps, _ = beam_search(model, _src(), BOS, EOS, max_len=4, beam=3)
    assert all(len(h) <= 3 for h in hyps)
