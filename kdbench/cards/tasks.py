"""Each shipped task's card type: the shared sections (kdbench.cards.sections) plus its data,
models, augmentation and loss settings; each task's declaration names its own (kdbench.tasks).
The model sections list exactly the keys the task's model constructors take; a value left out
keeps the constructor's default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdbench.cards.sections import Card, TeacherTrain
from kdbench.cards.typed import bounded


@dataclass(frozen=True, kw_only=True)
class TeacherOf:
    """Mixed into each task's teacher section: its seed and how kdbench trains it."""

    seed: int = bounded(0, ge=0)
    train: TeacherTrain | Literal[False] = field(default_factory=TeacherTrain)  # false: given by --teacher


@dataclass(frozen=True, kw_only=True)
class Flip:
    hflip: float = bounded(0.0, ge=0, le=1)


# ----------------------------------------------------------------------------- classification

@dataclass(frozen=True, kw_only=True)
class ClassificationData:
    """digits: stratified train/val/test fractions; mnist1d: the same of a pool of num_samples
    signals generated with the generator's seed; cifar100: val_size images held out of the
    official training file (test = the official test file).

    `imbalance` ρ ≥ 1 makes the training split long-tailed, after the split (val and test stay as
    they are): class c keeps ⌊n_max · ρ^(−c/(C−1))⌋ of its training samples, n_max the smallest
    class's count, drawn from split_seed (the CIFAR-LT recipe; kdbench.adapters.splits.long_tail_indices).
    Unset: the split as it is."""

    dataset: Literal["digits", "mnist1d", "cifar100"]
    num_samples: int | None = bounded(None, ge=10)
    seed: int | None = bounded(None, ge=0)
    val_fraction: float | None = bounded(None, gt=0, lt=1)
    test_fraction: float | None = bounded(None, gt=0, lt=1)
    val_size: int | None = bounded(None, ge=1)
    split_seed: int | None = bounded(None, ge=0)
    limit_train: int | None = bounded(None, ge=1)
    limit_val: int | None = bounded(None, ge=1)
    limit_test: int | None = bounded(None, ge=1)
    imbalance: float | None = bounded(None, ge=1)  # long-tailed training split: largest over smallest class


@dataclass(frozen=True, kw_only=True)
class ClassificationModel:
    arch: str
    widths: list[int] | None = None
    depth: int | None = bounded(None, ge=1)  # convnet1d: convolutions per stage; transformer1d: blocks per stage
    kernel: int | None = bounded(None, ge=1)  # convnet1d: odd kernel size
    patch: int | None = bounded(None, ge=1)  # transformer1d: input samples per token
    heads: int | None = bounded(None, ge=1)  # transformer1d: attention heads


@dataclass(frozen=True, kw_only=True)
class ClassificationTeacher(ClassificationModel, TeacherOf):
    pass


@dataclass(frozen=True, kw_only=True)
class ClassificationCard(Card):
    data: ClassificationData
    augmentation: Literal["none", "shift", "crop_flip", "shift1d"] = "none"
    student: ClassificationModel
    teacher: ClassificationTeacher


# ---------------------------------------------------------------------------------- detection

@dataclass(frozen=True, kw_only=True)
class DetectionData:
    """shapes: n_train/n_val/n_test generated scenes; coco2017: val = val_images train2017 images
    held out with split_seed, test = val2017."""

    dataset: Literal["shapes", "coco2017"]
    n_train: int | None = bounded(None, ge=1)
    n_val: int | None = bounded(None, ge=1)
    n_test: int | None = bounded(None, ge=1)
    size: int | None = bounded(None, ge=8)
    max_objects: int | None = bounded(None, ge=1)
    seed: int | None = bounded(None, ge=0)
    val_images: int | None = bounded(None, ge=1)
    split_seed: int | None = bounded(None, ge=0)
    limit_train: int | None = bounded(None, ge=1)
    limit_val: int | None = bounded(None, ge=1)
    limit_test: int | None = bounded(None, ge=1)


@dataclass(frozen=True, kw_only=True)
class DetectionModel:
    arch: Literal["fdr-detr"]
    backbone: str | None = None
    widths: list[int] | None = None
    strides: list[int] | None = None
    dim: int | None = bounded(None, ge=1)
    heads: int | None = bounded(None, ge=1)
    ffn: int | None = bounded(None, ge=1)
    layers: int | None = bounded(None, ge=1)
    queries: int | None = bounded(None, ge=1)
    reg_max: int | None = bounded(None, ge=1)
    query_select: bool | None = None  # queries from the encoder's top-Q tokens (D-FINE) or learnt
    # D-FINE's contrastive denoising queries, training only: num_denoising (0: none, the default),
    # label_noise_ratio (default 0.5) and box_noise_scale (default 1.0)
    denoising: int | None = bounded(None, ge=0)
    label_noise: float | None = bounded(None, ge=0, le=1)
    box_noise: float | None = bounded(None, ge=0)


@dataclass(frozen=True, kw_only=True)
class DetectionTeacher(DetectionModel, TeacherOf):
    pass


@dataclass(frozen=True, kw_only=True)
class Matcher:
    cost_class: float = bounded(2.0, ge=0)
    cost_bbox: float = bounded(5.0, ge=0)
    cost_giou: float = bounded(2.0, ge=0)


@dataclass(frozen=True, kw_only=True)
class DetectionLossWeights:
    vfl: float = bounded(1.0, ge=0)
    l1: float = bounded(5.0, ge=0)
    giou: float = bounded(2.0, ge=0)
    fgl: float = bounded(0.15, ge=0)


@dataclass(frozen=True, kw_only=True)
class DetectionEval:
    top_k: int = bounded(100, ge=1)


@dataclass(frozen=True, kw_only=True)
class DetectionCard(Card):
    data: DetectionData
    augmentation: Flip = field(default_factory=Flip)
    student: DetectionModel
    teacher: DetectionTeacher
    matcher: Matcher = field(default_factory=Matcher)
    loss: DetectionLossWeights = field(default_factory=DetectionLossWeights)
    eval: DetectionEval = field(default_factory=DetectionEval)


# --------------------------------------------------------------------------------------- pose

@dataclass(frozen=True, kw_only=True)
class PoseData:
    """figures: n_train/n_val/n_test generated images; coco / coco-wholebody: val = persons of
    val_images train2017 images held out with split_seed, test = val2017."""

    dataset: Literal["figures", "coco", "coco-wholebody"]
    input_size: list[int] | None = None  # [width, height] of the top-down crops
    n_train: int | None = bounded(None, ge=1)
    n_val: int | None = bounded(None, ge=1)
    n_test: int | None = bounded(None, ge=1)
    size: int | None = bounded(None, ge=8)
    seed: int | None = bounded(None, ge=0)
    val_images: int | None = bounded(None, ge=1)
    split_seed: int | None = bounded(None, ge=0)
    limit_train: int | None = bounded(None, ge=1)
    limit_val: int | None = bounded(None, ge=1)
    limit_test: int | None = bounded(None, ge=1)


@dataclass(frozen=True, kw_only=True)
class PoseModel:
    arch: Literal["simcc"]
    backbone: str | None = None
    widths: list[int] | None = None
    hidden: int | None = bounded(None, ge=1)
    kernel: int | None = bounded(None, ge=1)
    out_indices: list[int] | None = None


@dataclass(frozen=True, kw_only=True)
class PoseTeacher(PoseModel, TeacherOf):
    pass


@dataclass(frozen=True, kw_only=True)
class SimCC:
    split_ratio: float = bounded(2.0, gt=0)
    sigma: list[float] = field(default_factory=lambda: [1.225, 1.415])


@dataclass(frozen=True, kw_only=True)
class PoseLoss:
    beta: float = bounded(10.0, gt=0)
    label_beta: float = bounded(10.0, gt=0)


@dataclass(frozen=True, kw_only=True)
class PoseCard(Card):
    data: PoseData
    augmentation: Flip = field(default_factory=Flip)
    student: PoseModel
    teacher: PoseTeacher
    simcc: SimCC = field(default_factory=SimCC)
    loss: PoseLoss = field(default_factory=PoseLoss)


# ---------------------------------------------------------------------------------------- ood

@dataclass(frozen=True, kw_only=True)
class OODNgrams:
    """clinc150: the n-gram bag an `ngram_bag` model reads (fastText-style, no hashing):
    word n-grams of orders 1..words and character n-grams of lengths chars[0]..chars[1] of each
    "<word>", those seen at least min_count times in the ID training set."""

    words: int = bounded(2, ge=1)
    chars: list[int] | None = None  # [min, max] characters; None: no character n-grams
    min_count: int = bounded(2, ge=1)


@dataclass(frozen=True, kw_only=True)
class OODData:
    """langid: sentences per language and split from wordfreq's lists (ID train/val/test, OOD
    val/test); clinc150: the official train, val, test, oos_val and oos_test lists."""

    dataset: Literal["langid", "clinc150"]
    id: list[str] | None = None
    near: list[str] | None = None
    far: list[str] | None = None
    vocab_words: int | None = bounded(None, ge=1)
    words: list[int] | None = None  # [min, max] words per sentence
    train_per_lang: int | None = bounded(None, ge=1)
    val_per_lang: int | None = bounded(None, ge=1)
    test_per_lang: int | None = bounded(None, ge=1)
    ood_val_per_lang: int | None = bounded(None, ge=1)
    ood_per_lang: int | None = bounded(None, ge=1)
    max_chars: int | None = bounded(None, ge=1)
    seed: int | None = bounded(None, ge=0)
    tokens: Literal["chars", "words"] | None = None  # clinc150 only; langid is characters
    min_count: int | None = bounded(None, ge=1)  # words: rarer training words become UNK
    max_tokens: int | None = bounded(None, ge=1)  # words: the cut per utterance
    ngrams: OODNgrams | None = None  # clinc150 only: the n-grams `ngram_bag` models read
    val_oos_train: bool | None = None  # clinc150: oos_train (never trained on) joins oos_val in val


@dataclass(frozen=True, kw_only=True)
class OODModel:
    # the TextEncoder over data.tokens, or fastText's bag over data.ngrams (dim and dropout only)
    arch: Literal["char_transformer", "word_transformer", "ngram_bag"]
    dim: int | None = bounded(None, ge=1)
    depth: int | None = bounded(None, ge=1)
    heads: int | None = bounded(None, ge=1)
    patch: int | None = bounded(None, ge=1)
    mlp_ratio: float | None = bounded(None, gt=0)
    dropout: float | None = bounded(None, ge=0, lt=1)


@dataclass(frozen=True, kw_only=True)
class OODTeacher(OODModel, TeacherOf):
    pass


@dataclass(frozen=True, kw_only=True)
class OODCard(Card):
    data: OODData
    student: OODModel
    teacher: OODTeacher


# -------------------------------------------------------------------------------- translation

@dataclass(frozen=True, kw_only=True)
class TranslationData:
    """phrases: generated train/val/test pairs; multi30k, iwslt14: the user's files with their
    own valid split as val."""

    dataset: Literal["phrases", "multi30k", "iwslt14"]
    train: int | None = bounded(None, ge=1)
    val: int | None = bounded(None, ge=1)
    test: int | None = bounded(None, ge=1)
    seed: int | None = bounded(None, ge=0)
    max_items: int | None = bounded(None, ge=1)
    source: str | None = None
    target: str | None = None
    vocab: Literal["sentencepiece", "words"] | None = None
    vocab_size: int | None = bounded(None, ge=8)
    min_count: int | None = bounded(None, ge=1)
    max_tokens: int | None = bounded(None, ge=4)


@dataclass(frozen=True, kw_only=True)
class TranslationModel:
    arch: Literal["transformer"]
    dim: int | None = bounded(None, ge=1)
    heads: int | None = bounded(None, ge=1)
    ffn: int | None = bounded(None, ge=1)
    encoder_layers: int | None = bounded(None, ge=1)
    decoder_layers: int | None = bounded(None, ge=1)
    dropout: float | None = bounded(None, ge=0, lt=1)
    norm: Literal["post", "pre"] | None = None


@dataclass(frozen=True, kw_only=True)
class TranslationTeacher(TranslationModel, TeacherOf):
    pass


@dataclass(frozen=True, kw_only=True)
class TaskLoss:
    label_smoothing: float = bounded(0.0, ge=0, lt=1)


@dataclass(frozen=True, kw_only=True)
class Decode:
    beam: int = bounded(5, ge=1)
    lenpen: float = 1.0
    max_len_a: float = bounded(1.5, ge=0)
    max_len_b: int = bounded(10, ge=0)
    batch_size: int | None = bounded(None, ge=1)


@dataclass(frozen=True, kw_only=True)
class TranslationCard(Card):
    data: TranslationData
    student: TranslationModel
    teacher: TranslationTeacher
    task_loss: TaskLoss = field(default_factory=TaskLoss)
    decode: Decode = field(default_factory=Decode)

