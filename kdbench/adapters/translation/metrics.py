"""BLEU and chrF through sacrebleu on detokenized text (Post, "A Call for Clarity in Reporting
BLEU Scores", WMT 2018): default 13a tokenization, mixed case, one reference. Both are registered
here (kdbench.metrics); sacrebleu is imported only when they are computed."""

from __future__ import annotations

from functools import cache

from kdbench.metrics import register_metric

register_metric("bleu", "higher", "BLEU (sacrebleu, detokenized)", range=(0.0, 100.0))
register_metric("chrf", "higher", "chrF (sacrebleu)", range=(0.0, 100.0))


def corpus_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """{"bleu", "chrf"} of detokenized hypotheses against one reference each."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return {"bleu": float(BLEU().corpus_score(hypotheses, [references]).score),
            "chrf": float(CHRF().corpus_score(hypotheses, [references]).score)}


@cache
def signatures() -> dict[str, str]:
    """sacrebleu's signatures of the two metrics as `corpus_metrics` computes them."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    bleu.corpus_score(["a"], [["a"]])  # the signature's reference count is known once scored
    chrf.corpus_score(["a"], [["a"]])
    return {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}
