"""Text for causal language models: a corpus cut into sequences of token ids.

``text`` (``--data text --root PATH``): a ``.txt`` file, or a folder searched recursively for
``.txt`` files. A folder's documents are its files; a single file's documents are its
paragraphs (blocks separated by a blank line). Documents are split into train / validation /
test by a hash of their name (the file's relative path, or the paragraph's number), so the
split is deterministic and a document is never cut between two splits: the documents are
ordered by that hash and the first 80% of the tokens go to training, the next 10% to
validation, the rest to test, each boundary moved to the nearest document end (inside a
document only when one document holds a whole split's share). Each split's stream of ids is
cut into sequences of ``seq_len`` tokens (the remainder dropped).

Tokens come from the model folder's tokenizer (its end-of-text id separates documents) or,
without one, are the text's UTF-8 bytes (ids 0-255). A batch is ``(ids, ids)``: the causal-LM
task (:func:`prunewise.tasks.causal_lm`) shifts the targets itself.

``tokens`` (``--data tokens --root FILE.safetensors``): pre-tokenized ids, integer tensors
``train``, ``test`` and optionally ``val`` (any shape; read in order and cut the same way).

Both readers refuse, with one line and before any work: a missing path, a folder without
``.txt`` files, a binary file (NUL bytes or not UTF-8), an empty corpus, a corpus too small
for one sequence in every split, and more than :data:`MAX_TEXT_BYTES` of text.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from prunewise import files
from prunewise.errors import PrunewiseError

from .core import DataBundle, Split

#: The most bytes of text a corpus may hold (the reader's bound: everything is read into memory).
MAX_TEXT_BYTES = 256 << 20
#: The most ids a ``tokens`` file may hold.
MAX_TOKENS = 1 << 28
#: Train / validation shares of the tokens (the test split takes the rest).
SHARES = (0.8, 0.1)
BYTE_VOCAB = 256


def _documents(root: Path) -> list[tuple[str, str]]:
    """``[(name, text)]`` of a corpus (module notes), every file checked to be text."""
    if not root.exists():
        raise PrunewiseError(f"--root {root}: no such file or folder (data set 'text' reads a "
                             f".txt file or a folder of them)")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not paths:
        raise PrunewiseError(f"--root {root}: no .txt file in this folder (searched recursively)")
    total = sum(p.stat().st_size for p in paths)
    if total > MAX_TEXT_BYTES:
        raise PrunewiseError(f"--root {root}: {total:,} bytes of text is more than the "
                             f"{MAX_TEXT_BYTES:,} this reader holds in memory; use a smaller "
                             f"corpus or pre-tokenized ids (--data tokens)")
    docs = []
    for p in paths:
        raw = p.read_bytes()
        try:
            if b"\x00" in raw:
                raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PrunewiseError(f"{p}: not a text file (binary data or not UTF-8)") from None
        name = p.name if root.is_file() else str(p.relative_to(root))
        if root.is_file():
            blocks = [b for b in text.split("\n\n") if b.strip()]
            docs += [(f"{name}#{i}", b + "\n\n") for i, b in enumerate(blocks)]
        elif text.strip():
            docs.append((name, text))
    if not docs:
        raise PrunewiseError(f"--root {root}: the corpus holds no text")
    return docs


def _order(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


def _encode(tokenizer, text: str) -> torch.Tensor:
    """A document's ids: its UTF-8 bytes without a tokenizer, else the tokenizer's ids and
    its end-of-text id."""
    if tokenizer is None:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    return torch.tensor(list(ids) + ([int(eos)] if isinstance(eos, int) else []),
                        dtype=torch.long)


def _cut(streams: list[torch.Tensor]) -> list[torch.Tensor]:
    """Documents' ids (in split order) -> the three splits' streams, boundaries at document
    ends nearest the shares (module notes)."""
    lengths = torch.tensor([s.numel() for s in streams], dtype=torch.float64)
    total = float(lengths.sum())
    ends = torch.cumsum(lengths, 0)
    flat = torch.cat(streams)
    cuts, at = [], 0
    for share in (SHARES[0], SHARES[0] + SHARES[1]):
        goal = share * total
        doc = int(torch.argmin((ends - goal).abs()))
        pos = int(ends[doc])
        if pos <= at or pos >= total:   # one document holds the whole share: cut inside it
            pos = int(goal)
        cuts.append(pos)
        at = pos
    return [flat[:cuts[0]], flat[cuts[0]:cuts[1]], flat[cuts[1]:]]


def _bundle(name: str, streams: list[torch.Tensor], seq_len: int, where: str,
            vocab: int, tokenizer=None) -> DataBundle:
    splits = []
    for split, ids in zip(("train", "validation", "test"), streams):
        n = ids.numel() // seq_len
        if n == 0:
            raise PrunewiseError(f"{where}: the {split} split has {ids.numel()} tokens, fewer "
                                 f"than one sequence of {seq_len} (--seq-len); use a larger "
                                 f"corpus or shorter sequences")
        seqs = ids[:n * seq_len].reshape(n, seq_len).contiguous()
        splits.append(Split(seqs, seqs.clone()))
    return DataBundle(name=name, train=splits[0], val=splits[1], test=splits[2],
                      num_classes=0, in_channels=0, image_size=0, mean=(), std=(), augment={},
                      raw=True, task="causal_lm", vocab=vocab, tokenizer=tokenizer)


def check_seq_len(seq_len) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= 1 << 16:
        raise PrunewiseError(f"seq_len={seq_len!r} is invalid; it must be an integer in "
                             f"[2, 65536]")
    return seq_len


def load_text(root, seq_len: int = 128, tokenizer=None) -> DataBundle:
    """The corpus at ``root`` as sequences of ``seq_len`` ids (module notes); ``tokenizer``: a
    HuggingFace tokenizer, or None for bytes."""
    if root is None:
        raise PrunewiseError("data set 'text' needs --root PATH (a .txt file or a folder of them)")
    check_seq_len(seq_len)
    root = Path(root)
    docs = sorted(_documents(root), key=lambda d: _order(d[0]))
    streams = [_encode(tokenizer, text) for _, text in docs]
    if not any(s.numel() for s in streams):
        raise PrunewiseError(f"--root {root}: the corpus gives no tokens")
    vocab = BYTE_VOCAB if tokenizer is None else len(tokenizer)
    return _bundle("text", _cut(streams), seq_len, f"--root {root}", vocab, tokenizer)


def load_tokens(root, seq_len: int = 128) -> DataBundle:
    """Pre-tokenized ids from a ``.safetensors`` file (module notes)."""
    if root is None:
        raise PrunewiseError("data set 'tokens' needs --root FILE.safetensors")
    check_seq_len(seq_len)
    path = Path(root)
    header, _ = files.read_header(path, "token ids")
    for key, entry in header.items():
        if key not in ("train", "val", "test"):
            raise PrunewiseError(f"{path}: tensor '{key}' is not one of train, val, test")
        if entry["dtype"] not in ("I64", "I32", "I16", "U16", "U8", "U32"):
            raise PrunewiseError(f"{path}: tensor '{key}' holds {entry['dtype']}, not integer "
                                 f"token ids")
        if files.numel(entry["shape"]) > MAX_TOKENS:
            raise PrunewiseError(f"{path}: tensor '{key}' holds more than {MAX_TOKENS:,} ids")
    for key in ("train", "test"):
        if key not in header:
            raise PrunewiseError(f"{path}: needs the tensors 'train' and 'test' (and optionally "
                                 f"'val') of token ids")
    tensors = files.read_tensors(path, "token ids")
    flat = {k: v.reshape(-1).long() for k, v in tensors.items()}
    if "val" not in flat:   # the last tenth of the training ids
        cut = flat["train"].numel() * 9 // 10
        flat["val"], flat["train"] = flat["train"][cut:], flat["train"][:cut]
    if any(bool((v < 0).any()) for v in flat.values()):
        raise PrunewiseError(f"{path}: negative token ids")
    vocab = max(int(v.max()) for v in flat.values() if v.numel()) + 1
    return _bundle("tokens", [flat["train"], flat["val"], flat["test"]], seq_len, str(path), vocab)
