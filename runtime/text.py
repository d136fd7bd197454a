"""The text classifier: class names with synonyms, CLIP's BPE tokenizer, the templates, averaging.

numpy only: the runtime's base install (no torch, no open_clip) builds its classifier here.
The tokenizer is CLIP's byte-level BPE, implemented from the algorithm (Radford et al. 2021;
Sennrich et al. 2016) and reading the merges file that `fsa export` copies into the artefact
(`bpe_simple_vocab_16e6.txt.gz`, hashed in meta.json like every file).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import html
import importlib.util
import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

from fsa_deploy.contract import CONTEXT_LENGTH, TOKENIZER_VOCAB
from fsa_deploy.errors import FSAError, escape
from fsa_deploy.log import logger
from fsa_deploy.runtime import environ, gate
from fsa_deploy.runtime.cancel import checkpoint

LOG = logger("runtime")

DEFAULT_CLASSES = Path(__file__).parent / "data" / "voc21.txt"  # PASCAL VOC's 21, background first
N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes, their end-of-word forms, merges, 2 specials
SOT, EOT = "<start_of_text>", "<end_of_text>"
Encode = Callable[[np.ndarray], np.ndarray]  # tokens int [T, L <= 77] -> embeddings float32 [T, D]

# CLIP's pre-tokenisation: the specials, English contractions, letter runs, single digits,
# runs of other non-space characters (case-insensitive: `regex` for the \p classes).
PRETOKEN = rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
# What open_clip's text cleaning (ftfy) changes in well-formed text: typographic quotes, and
# (through NFKC on these code points only) Latin ligatures and full-width forms.
QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})


def byte_alphabet() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map: printable Latin-1 bytes stand
    for themselves, the other 68 bytes for the code points 256, 257, ... in byte order. The
    dict's order is the vocabulary's: the printable bytes first, then the others."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def _narrow(ch: str) -> str:
    """Full-width forms and Latin ligatures to their plain letters (ftfy's width/ligature fixes)."""
    cp = ord(ch)
    if 0xFF01 <= cp <= 0xFF5E or 0xFB00 <= cp <= 0xFB06 or cp == 0x3000:
        return unicodedata.normalize("NFKC", ch)
    return ch


PIPE_PREFIXES = ("/dev/fd/", "/proc/self/fd/")  # what the shell's process substitution <(...) gives
USER_TEXT_MAX = 16 << 20


def read_user_text(path: str | os.PathLike[str], option: str) -> str:
    """A small text file the user names (a class list): the one reader. A regular file, or the pipe of a
    process substitution (`<(...)`, /dev/fd/N); a named FIFO (it would block forever), a device, a
    socket or a folder is refused; UTF-8, a BOM dropped. One line naming `option` and the path."""
    shown = f"{option} {escape(str(path))}"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise FSAError(f"{shown}: unreadable ({e.strerror or type(e).__name__})") from None
    pipe = stat.S_ISFIFO(mode) and str(path).startswith(PIPE_PREFIXES)
    if not (stat.S_ISREG(mode) or pipe):
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise FSAError(f"{shown}: {what}, not a regular file (a pipe is read as <(command))")
    try:
        with open(path, "rb") as f:
            data = f.read(USER_TEXT_MAX + 1)
        if len(data) > USER_TEXT_MAX:
            raise FSAError(f"{shown}: larger than {USER_TEXT_MAX >> 20} MiB; not a class list")
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FSAError(f"{shown}: unreadable ({type(e).__name__})") from e


def clean(text: str) -> str:
    """open_clip's `lower` cleaning for well-formed text: NFC, quotes uncurled, ligatures and
    full-width forms narrowed, HTML entities unescaped twice, whitespace collapsed, lower case.
    (ftfy's mojibake repair is not reproduced: a class name is typed, not mis-decoded.)"""
    text = unicodedata.normalize("NFC", text).translate(QUOTES)
    text = "".join(_narrow(c) for c in text) if any(ord(c) >= 0x3000 for c in text) else text
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class Tokenizer:
    """CLIP's BPE tokenizer on a merges file (gzip text: a header line, then `a b` per merge)."""

    def __init__(self, merges_file: str | os.PathLike[str]):
        try:
            with gzip.open(merges_file, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise FSAError(f"{merges_file}: unreadable tokenizer vocabulary ({type(e).__name__})") from e
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise FSAError(f"{merges_file}: not CLIP's BPE merges file ({len(merges)} merges, expected {N_MERGES})")
        self.bytes = byte_alphabet()
        symbols = list(self.bytes.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {s: i for i, s in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]
        self.pattern = regex.compile(PRETOKEN, regex.IGNORECASE)
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._merge)

    def _merge(self, word: str) -> tuple[str, ...]:
        """BPE on one pre-token (already byte-mapped): start from its characters, the last one
        marked end-of-word, and merge the lowest-ranked adjacent pair until none is ranked."""
        if word in (SOT, EOT):
            return (word,)
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, N_MERGES))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start and end tokens."""
        out: list[int] = []
        for piece in self.pattern.findall(clean(text)):
            word = piece if piece in (SOT, EOT) else "".join(self.bytes[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[s] for s in self._bpe(word))
        return out

    def __call__(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """int64 [T, context_length]: start, the text's tokens, end, zeros; a text too long is
        cut and its last kept position set to the end token (the text encoder pools there)."""
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][:context_length]
            ids[-1] = self.eot
            out[i, : len(ids)] = ids
        return out


def default_vocab_file() -> Path:
    """open_clip's merges file, found by path (open_clip is not imported): for the reference,
    which has no artefact; a runtime reads the artefact's copy."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FSAError(f"no tokenizer vocabulary: the artefact carries {TOKENIZER_VOCAB} (re-export with this "
                       "fsa-deploy), or install open_clip_torch")
    return Path(list(spec.submodule_search_locations)[0]) / TOKENIZER_VOCAB


@functools.lru_cache(maxsize=4)
def tokenizer(vocab_file: str | None = None) -> Tokenizer:
    """The tokenizer of a merges file (default: open_clip's), built once per file."""
    return Tokenizer(vocab_file or default_vocab_file())


def tokenize(prompts: Sequence[str], vocab_file: str | os.PathLike[str] | None = None) -> np.ndarray:
    """CLIP's BPE tokens: int64 [T, 77]."""
    return tokenizer(str(vocab_file) if vocab_file else None)(list(prompts))


def trimmed(tokens: np.ndarray) -> np.ndarray:
    """tokens [T, 77] cut after the batch's longest prompt (its end token): CLIP's text tower is
    causal and pools at the end token, so the padding after it never changes an embedding."""
    return tokens[:, : max(2, int((tokens != 0).sum(axis=1).max(initial=0)))]


def padded(tokens: np.ndarray, length: int = CONTEXT_LENGTH) -> np.ndarray:
    """tokens [T, L] padded with zeros to [T, length] (a graph or engine with a static length)."""
    if tokens.shape[1] >= length:
        return tokens
    return np.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))


@dataclass(frozen=True)
class Vocabulary:
    """Classes and their synonyms: `queries` flattened in order, `query_class[i]` = class of query i."""

    classes: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> list[str]:
        """One display name per class (its first synonym)."""
        return [c[0] for c in self.classes]

    @property
    def queries(self) -> list[str]:
        return [q for c in self.classes for q in c]

    @property
    def query_class(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) for _ in c]

    @classmethod
    def parse(cls, text: str, what: str = "--classes") -> Vocabulary:
        """'cat; kitty, dog, grass': commas and newlines separate classes, semicolons synonyms."""
        return cls.from_lines(split_classes(text), what)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], separator: str = ";", what: str = "--classes-file") -> Vocabulary:
        """One class a line in label order, synonyms split on `separator` (';' in ours and FSA's
        files, ', ' or ',' in other repositories'): the one reader of class files (`fsa segment`,
        `fsa eval`), read_user_text's rules (a regular file or a process substitution's pipe; a FIFO
        would block forever). An empty line between classes would shift every later label index,
        so it is refused."""
        lines = read_user_text(path, what).splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if blank := next((n for n, line in enumerate(lines, 1) if not line.strip()), None):
            raise FSAError(f"{what} {path}: line {blank} is empty (every line is one class, in label order)")
        return cls.from_lines(lines, f"{what} {path}", separator)

    @classmethod
    def from_lines(cls, lines: Sequence[str], what: str, separator: str = ";") -> Vocabulary:
        """Classes from lines (or comma-separated items): a BOM is dropped; control characters, '|'
        (it would split a Markdown table's cell), and a class identical to another after CLIP's
        cleaning (its probability would split in two) are refused; a synonym shared by two classes
        (COCO-Object's `bed`) is accepted with one warning line."""
        classes: list[tuple[str, ...]] = []
        first: dict[tuple[str, ...], int] = {}
        owner: dict[str, int] = {}
        shared: list[str] = []
        for n, line in enumerate(lines, 1):
            line = line.removeprefix("\ufeff") if n == 1 else line
            names = tuple(x.strip() for x in line.split(separator.strip() or separator) if x.strip())
            if not names:
                continue
            if bad := next((c for x in names for c in x if _control(c)), None):
                raise FSAError(f"{what}: item {n} holds a control character (U+{ord(bad):04X}); refused")
            if any("|" in x for x in names):
                raise FSAError(f"{what}: item {n} holds '|', which would split a table's cell; refused")
            key = tuple(clean(x) for x in names)
            if key in first:
                raise FSAError(f"{what}: item {n} ({escape(line.strip()[:80])}) repeats item {first[key]}; a repeated "
                               "class splits its probability: give each class once")
            first[key] = n
            for x in dict.fromkeys(key):
                if x in owner and owner[x] != len(classes):
                    shared.append(x)
                owner.setdefault(x, len(classes))
            classes.append(names)
        if not classes:
            raise FSAError(f"{what}: no class names given")
        if shared:
            LOG.warning(f"fsa: warning: {what}: {', '.join(repr(x) for x in dict.fromkeys(shared))} named in more "
                        "than one class; such pixels go to whichever class scores higher")
        return cls(tuple(classes))


def split_classes(text: str) -> list[str]:
    """The classes text's items: a comma or a line break (\\n, \\r\\n, \\r) ends a class, as in a class file."""
    return re.split(r"\r\n|[\r\n,]", text)  # other line separators stay refused as control characters


def classes_text(vocab: Vocabulary, what: str = "--server") -> str:
    """`vocab` in --classes syntax (commas between classes, ';' between synonyms): fsa_segment's
    CLASSES input, the page's classes field. A name holding ',' or ';' (a class file's line may)
    would come back as other classes, so it is refused, naming `what` (where the vocabulary came from)."""
    if bad := next((n for c in vocab.classes for n in c if "," in n or ";" in n), None):
        raise FSAError(f"{what}: class name {escape(repr(bad))} holds ',' or ';', which the classes text "
                       "(commas between classes, ';' between synonyms) cannot carry")
    return ", ".join("; ".join(c) for c in vocab.classes)


def _control(c: str) -> bool:
    """Control characters (NUL, ESC, newlines), line separators and bidirectional overrides."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp") or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (floored at 1e-12, as torch's F.normalize)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def classifier(
    encode: Encode, queries: Sequence[str], templates: Sequence[str], batch: int = 64,
    vocab_file: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """T float32 [K, D]: per query, each template's embedding L2-normalised, averaged, normalised again.

    `encode` maps tokens int [T, L] to embeddings [T, D] (a Backend's encode_text: text.onnx,
    a text engine or open_clip's tower); L is the batch's longest prompt (`trimmed`), not 77: a
    few times less work for class names, the same embeddings. Prompts are encoded in batches of `batch` (64: ONNX
Runtime's CPU arena keeps its high-water mark, measured 418 MiB peak RSS at 256 for 171
classes x 80 templates on the tiny export, 192 MiB at 64, with no loss of speed);
    `vocab_file` is the tokenizer's merges file (the artefact's; default open_clip's).
    """
    if not queries:
        raise FSAError("no class names given (K = 0)")
    prompts = [t.format(q) for q in queries for t in templates]
    embs = []
    for i in range(0, len(prompts), batch):
        checkpoint("text", i, len(prompts))  # a cancelled request (fsa app) stops here, between prompt batches
        embs.append(np.asarray(encode(trimmed(tokenize(prompts[i : i + batch], vocab_file))), dtype=np.float32))
    e = l2_normalize(np.concatenate(embs)).reshape(len(queries), len(templates), -1)
    return l2_normalize(e.mean(axis=1)).astype(np.float32)


def cache_key(model_key: str, queries: Sequence[str], templates: Sequence[str]) -> str:
    """What a class-embedding cache entry depends on: the model (or artefact), queries, templates."""
    blob = json.dumps({"model": model_key, "queries": list(queries), "templates": list(templates)})
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_classifier(
    cache_dir: str | os.PathLike[str] | None, model_key: str, encode: Encode,
    queries: Sequence[str], templates: Sequence[str], vocab_file: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, bool]:
    """`classifier` with an on-disk cache, one .npy entry per class name (model, name, templates):
    a list with one class more costs one class. Returns (T float32 [K, D], hit: no name was encoded).

    Processes sharing a cache (fsa_segment's instances, `fsa segment` next to `fsa serve`) take
    the folder's lock around misses: one encodes them, the others then read their entries.
    """
    if cache_dir is None:
        return classifier(encode, queries, templates, vocab_file=vocab_file), False
    paths = [Path(cache_dir) / f"text-{cache_key(model_key, [q], templates)}.npy" for q in queries]
    rows: dict[int, np.ndarray] = {}

    def load_hits() -> list[int]:
        for i, path in enumerate(paths):
            if i not in rows and (t := _load_entry(path, 1)) is not None:
                rows[i] = t
        return [i for i in range(len(queries)) if i not in rows]

    def encode_misses(missing: list[int]) -> dict[int, np.ndarray]:
        t = classifier(encode, [queries[i] for i in missing], templates, vocab_file=vocab_file)
        return {i: t[j : j + 1] for j, i in enumerate(missing)}

    missing = load_hits()
    if not missing:
        return np.concatenate([rows[i] for i in range(len(queries))]), True
    folder = usable_cache_dir(cache_dir, "class-embedding cache")
    if not os.access(folder, os.W_OK | os.X_OK):  # a read-only cache (a shared mount) serves its hits only
        rows.update(encode_misses(missing))
        return np.concatenate([rows[i] for i in range(len(queries))]), False
    with gate.lock(folder / ".lock", environ.value("FSA_LOCK_TIMEOUT"), what=f"class-embedding cache {folder}"):
        missing = load_hits()  # written while this process waited for the lock
        new = encode_misses(missing) if missing else {}
        rows.update(new)
        _keep_entries({paths[i]: t for i, t in new.items()})
    return np.concatenate([rows[i] for i in range(len(queries))]), not new


def _keep_entries(entries: dict[Path, np.ndarray]) -> None:
    """Write new cache entries; a NaN entry (a broken text graph) is used, caught later, never kept."""
    for path, t in entries.items():
        if entry_problem(t, 1):
            continue
        try:
            gate.save_npy(path, t, keep=False)  # our marker: a killed writer's leftover is swept next time
        except OSError:  # a full disk: the embeddings are good, only the entry is not kept
            return


def entry_problem(t: object, rows: int) -> str | None:
    """None if `t` can be a class-embedding entry of `rows` classes: float32 [rows, D], finite, unit rows."""
    if not isinstance(t, np.ndarray) or t.dtype != np.float32 or t.ndim != 2 or t.shape[0] != rows or not t.shape[1]:
        shape = getattr(t, "shape", None)
        return f"{getattr(t, 'dtype', type(t).__name__)} {shape} where float32 [{rows}, D] is expected"
    if not np.isfinite(t).all():
        return "NaN or infinite entries"
    norms = np.linalg.norm(t.astype(np.float64), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        return f"rows of norm {float(norms.min()):.3g}..{float(norms.max()):.3g} where unit rows are expected"
    return None


def _load_entry(path: Path, rows: int) -> np.ndarray | None:
    """A checked cache entry, or None; a damaged or wrong one (shape, dtype, NaN, zeros, a symlink)
    is removed and recomputed, never trusted."""
    if not (path.is_file() or path.is_symlink()):
        return None
    try:
        if path.is_symlink():  # entries are written by us, never links: one could lead anywhere
            raise ValueError("a symlink")
        t = np.load(path, allow_pickle=False)
        if entry_problem(t, rows):
            raise ValueError(entry_problem(t, rows))
        return t
    except (OSError, ValueError, EOFError):
        with contextlib.suppress(OSError, FSAError):
            gate.unlink(path)  # the link itself, never its target
        return None


def default_cache_dir() -> Path:
    return environ.value("FSA_CACHE_DIR")


def usable_cache_dir(folder: str | os.PathLike[str] | None, option: str = "--cache-dir") -> Path:
    """The class-embedding cache folder (None: the default), created; checked before any work, so
    that a file given as the cache is a one-line error naming `option`. A read-only folder is
    fine: its entries are read, misses are computed and not kept."""
    if folder is None:
        folder, option = default_cache_dir(), "FSA_CACHE_DIR" if os.environ.get("FSA_CACHE_DIR") else "cache folder"
    return gate.check_folder(folder, option, write=False)  # never inside an artefact folder, never a file


def add_vocabulary_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", help='"cat; kitty, dog, grass": commas separate classes, semicolons synonyms')
    g.add_argument("--classes-file", metavar="FILE", help="one class a line, synonyms separated by ';'")


def vocabulary_from_args(args: argparse.Namespace):
    if getattr(args, "classes", None) is not None:
        return Vocabulary.parse(args.classes)
    if getattr(args, "classes_file", None) is not None:
        return Vocabulary.from_file(args.classes_file)
    return Vocabulary.from_file(DEFAULT_CLASSES)
