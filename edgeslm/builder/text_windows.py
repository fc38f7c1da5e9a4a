"""Texts a build reads (evaluation and calibration): read, tokenize, skip, cut into windows.

One place for what every data-aware step needs: the text read with a clear error, tokenized with the
source's ``tokenizer.json`` (special tokens such as ``<|user|>`` in the text map to their ids), an
optional number of leading tokens skipped (the evaluation windows, so calibration never sees them),
and consecutive non-overlapping windows. The built-in texts ship in ``edgeslm/default_texts``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

DEFAULT_TEXTS = Path(__file__).resolve().parent.parent / "default_texts"
BUILTIN_EVALUATION = DEFAULT_TEXTS / "evaluation.txt"
BUILTIN_CALIBRATION = DEFAULT_TEXTS / "calibration.txt"


@dataclass(frozen=True)
class BuildText:
    """A text file a build reads, from ``skip_tokens`` on; ``origin`` says why this text was chosen."""

    path: Path
    origin: str  # "--eval-text", "--calibration-text", "built-in", "--eval-text after the evaluation windows"
    skip_tokens: int = 0

    @property
    def label(self) -> str:
        """The manifest's name for the text: the file name, prefixed for the built-in ones."""
        return f"edgeslm:{self.path.name}" if self.origin == "built-in" else self.path.name

    def read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the text {self.path} ({self.origin}): {exc}") from None

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def token_ids(self, tokenizer_json: Path) -> list[int]:
        """The text's token ids after ``skip_tokens``."""
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tokenizer_json)).encode(self.read(), add_special_tokens=False).ids
        return ids[self.skip_tokens:]

    def text_after_skip(self, tokenizer_json: Path) -> str:
        """The characters of the text from the first token after ``skip_tokens`` on."""
        text = self.read()
        if not self.skip_tokens:
            return text
        from tokenizers import Tokenizer

        offsets = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).offsets
        return text[offsets[self.skip_tokens][0]:] if len(offsets) > self.skip_tokens else ""

    def windows(self, tokenizer_json: Path, count: int, length: int) -> list[list[int]]:
        """``count`` consecutive, non-overlapping windows of ``length`` token ids."""
        ids = self.token_ids(tokenizer_json)
        windows = [ids[i * length:(i + 1) * length] for i in range(count)]
        windows = [w for w in windows if len(w) == length]
        if len(windows) < count:
            raise UsageError(f"the text {self.path.name} ({self.origin}) has {len(ids)} tokens: too short for "
                             f"{count} windows of {length}", hint="pass a longer text or fewer windows")
        return windows

    def sequences(self, tokenizer_json: Path, count: int, length: int) -> list[list[int]]:
        """Up to ``count`` consecutive sequences of ``length`` tokens (at least one, else UsageError)."""
        ids = self.token_ids(tokenizer_json)
        found = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)][:count]
        if not found:
            raise UsageError(f"the calibration text {self.path.name} ({self.origin}) has too few tokens "
                             f"({len(ids)}) for one sequence of {length}", hint="give a longer [[calibration_text]]")
        return found


def evaluation_text(path: Path | None) -> BuildText:
    return BuildText(Path(path), "--eval-text") if path else BuildText(BUILTIN_EVALUATION, "built-in")


def calibration_text(path: Path | None, eval_path: Path | None, eval_tokens: int) -> BuildText:
    """--calibration-text; else the --eval-text after its evaluation windows (the user's own domain);
    else the built-in chat-formatted calibration text (other articles than the built-in evaluation text)."""
    if path:
        return BuildText(Path(path), "--calibration-text")
    if eval_path:
        return BuildText(Path(eval_path), "--eval-text after the evaluation windows", eval_tokens)
    return BuildText(BUILTIN_CALIBRATION, "built-in")
