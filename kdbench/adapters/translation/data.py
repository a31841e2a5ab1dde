"""Parallel corpora for the translation task: generated EN→DE number and date phrases (smoke,
small), Multi30k task 1 from its raw gzip files (medium), IWSLT'14 De-En as fairseq's
`prepare-iwslt14.sh` leaves it (standard)."""

from __future__ import annotations

import datetime as dt
import gzip
import random
from dataclasses import dataclass
from pathlib import Path

from kdbench.errors import KDBenchError

MULTI30K_DIR = "multi30k"
MULTI30K_URL = "https://github.com/multi30k/dataset (data/task1/raw)"
#: split name → file stem and expected number of lines (Multi30k task 1: the official val files
#: are kdbench's val split, test_2016_flickr its test split).
MULTI30K_SPLITS = {"train": ("train", 29000), "val": ("val", 1014),
                   "test": ("test_2016_flickr", 1000)}
MULTI30K_LANGS = ("de", "en", "fr", "cs")
IWSLT14_DIR = "iwslt14.tokenized.de-en"
IWSLT14_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # split name → file stem
PHRASE_KINDS = ("cardinal", "ordinal", "year", "date")
DATE_FORMATS = ("full", "long", "medium", "short")


@dataclass
class Parallel:
    """Aligned source and target sentences of one split."""

    source: list[str]
    target: list[str]

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise ValueError(f"{len(self.source)} source lines but {len(self.target)} target lines")

    def __len__(self) -> int:
        return len(self.source)


# --- generated phrases -------------------------------------------------------------------------

def _phrase(kind: str, rng: random.Random) -> tuple[str, str]:
    """One (English, German) phrase of a kind, spelled out by num2words or formatted by babel."""
    from num2words import num2words

    if kind == "cardinal":
        n = rng.choice((rng.randrange(0, 100), rng.randrange(100, 1000), rng.randrange(1000, 100_000)))
        return num2words(n, lang="en"), num2words(n, lang="de")
    if kind == "ordinal":
        n = rng.randrange(1, 1000)
        return num2words(n, to="ordinal", lang="en"), num2words(n, to="ordinal", lang="de")
    if kind == "year":
        y = rng.randrange(1100, 2100)
        return num2words(y, to="year", lang="en"), num2words(y, to="year", lang="de")
    if kind == "date":
        from babel.dates import format_date

        day = dt.date(1900, 1, 1) + dt.timedelta(days=rng.randrange(0, 73_000))
        fmt = rng.choice(DATE_FORMATS)
        return format_date(day, fmt, locale="en"), format_date(day, fmt, locale="de")
    raise ValueError(f"unknown phrase kind {kind!r}; valid: {', '.join(PHRASE_KINDS)}")


def phrase_pairs(count: int, seed: int, max_items: int = 2) -> list[tuple[str, str]]:
    """`count` distinct-source EN→DE pairs; each joins 1..max_items phrases with ", " / " und "."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    attempts = 0
    while len(pairs) < count:
        attempts += 1
        if attempts > 50 * count:
            raise ValueError(f"could not draw {count} distinct phrases (got {len(pairs)})")
        items = [_phrase(rng.choice(PHRASE_KINDS), rng) for _ in range(rng.randint(1, max_items))]
        if len(items) == 1:
            en, de = items[0]
        else:
            en = ", ".join(e for e, _ in items[:-1]) + " and " + items[-1][0]
            de = ", ".join(d for _, d in items[:-1]) + " und " + items[-1][1]
        pairs.setdefault(en, de)
    return list(pairs.items())


def phrase_splits(sizes: dict[str, int], seed: int, max_items: int = 2) -> dict[str, Parallel]:
    """Generated splits; sources are distinct across all of them (no source in two splits)."""
    pairs = phrase_pairs(sum(sizes.values()), seed, max_items)
    random.Random(seed + 1).shuffle(pairs)
    out, start = {}, 0
    for split, n in sizes.items():
        chunk = pairs[start:start + n]
        out[split] = Parallel([s for s, _ in chunk], [t for _, t in chunk])
        start += n
    return out


# --- Multi30k ----------------------------------------------------------------------------------

def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [line.rstrip("\n") for line in f]


def load_multi30k(root: Path, source: str, target: str) -> dict[str, Parallel]:
    """Multi30k task 1 raw files `<root>/multi30k/{train,val,test_2016_flickr}.<lang>.gz`.

    Checks that every file exists, that source and target have the same number of lines and
    that the counts are Multi30k's (29,000 / 1,014 / 1,000).
    """
    for lang in (source, target):
        if lang not in MULTI30K_LANGS:
            raise KDBenchError(f"Multi30k language {lang!r}; valid: {', '.join(MULTI30K_LANGS)}")
    folder = root / MULTI30K_DIR
    out = {}
    for split, (stem, expected) in MULTI30K_SPLITS.items():
        lines = {}
        for lang in (source, target):
            path = folder / f"{stem}.{lang}.gz"
            if not path.is_file():
                plain = path.with_suffix("")
                if not plain.is_file():
                    raise KDBenchError(f"Multi30k file {path} is missing: put the task-1 raw files "
                                       f"from {MULTI30K_URL} in {folder}")
                path = plain
            lines[lang] = _read_lines(path)
            if len(lines[lang]) != expected:
                raise KDBenchError(f"{path} has {len(lines[lang])} lines; Multi30k {stem} has {expected}")
        out[split] = Parallel(lines[source], lines[target])
    return out


# --- IWSLT'14 ----------------------------------------------------------------------------------

def load_iwslt14(root: Path, source: str, target: str) -> dict[str, Parallel]:
    """`prepare-iwslt14.sh` output: `{train,valid,test}.{de,en}` (tokenized, lowercased, BPE with
    `@@ ` joiners), in `<root>/iwslt14.tokenized.de-en/` or directly in `<root>`."""
    folder = root / IWSLT14_DIR
    if not folder.is_dir():
        folder = root
    out = {}
    for split, stem in IWSLT14_SPLITS.items():
        lines = {}
        for lang in (source, target):
            path = folder / f"{stem}.{lang}"
            if not path.is_file():
                raise KDBenchError(f"IWSLT'14 file {path} is missing: run fairseq's "
                                   "examples/translation/prepare-iwslt14.sh and pass the folder it "
                                   f"writes ({IWSLT14_DIR}) or its parent as --data-root")
            lines[lang] = _read_lines(path)
        if len(lines[source]) != len(lines[target]):
            raise KDBenchError(f"IWSLT'14 {stem}: {len(lines[source])} {source} lines but "
                               f"{len(lines[target])} {target} lines")
        out[split] = Parallel(lines[source], lines[target])
    return out


def remove_bpe(text: str) -> str:
    """Undo subword-nmt joiners as fairseq's `--remove-bpe` does: drop every `@@ ` (and a final `@@`)."""
    return (text + " ").replace("@@ ", "").rstrip()
