"""The tokenizer of a language model, stored beside its checkpoint and inside every LM artifact.

Byte-level: token id = byte value (vocab 256), so nothing is trained or downloaded and every text round
trips. The file (`tokenizer.json`) is small JSON; its sha256 is recorded in the checkpoint's config and in
the manifest, and a tokenizer that does not match what it is used with is a TokenizerError.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import TokenizerError
from deploy.io import atomic_write_bytes

FORMAT = 1
FILE = "tokenizer.json"


@dataclass(frozen=True)
class ByteTokenizer:
    vocab: int = 256
    kind: str = "bytes"

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def decode_stream(self) -> StreamDecoder:
        return StreamDecoder()

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": FORMAT, "kind": self.kind, "vocab": self.vocab}, sort_keys=True) + "\n").encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: Path) -> Path:
        atomic_write_bytes(Path(path), self.to_bytes())
        return Path(path)


class StreamDecoder:
    """Bytes in, text out as soon as it forms whole UTF-8 characters (what `generate` streams)."""

    def __init__(self) -> None:
        self._pending = b""

    def push(self, token: int) -> str:
        self._pending += bytes([int(token)])
        try:
            text = self._pending.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data" and len(self._pending) < 4:
                return ""  # the rest of a multi-byte character is still to come
            text = self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return text


def load(path: Path, *, vocab: int | None = None, sha256: str | None = None, what: str = "the model") -> ByteTokenizer:
    """The tokenizer in `path`, checked against the model's vocabulary and the sha256 recorded for it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer {path} not found; it is written beside the checkpoint by training") from None
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"tokenizer {path} is unreadable ({exc}); restore the file shipped with {what}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") != "bytes":
        raise TokenizerError(f"tokenizer {path} is not a byte-level tokenizer of format {FORMAT}; restore {what}'s own")
    tok = ByteTokenizer(vocab=int(data.get("vocab", 0)))
    if vocab is not None and tok.vocab != vocab:
        raise TokenizerError(
            f"tokenizer {path} has a vocabulary of {tok.vocab} but {what} has {vocab}: they do not belong "
            "together; use the tokenizer.json saved with it"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if sha256 is not None and digest != sha256:
        raise TokenizerError(
            f"tokenizer {path} (sha256 {digest[:12]}…) is not the one {what} records ({sha256[:12]}…); "
            "use the tokenizer.json saved with it"
        )
    return tok
