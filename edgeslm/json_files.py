"""Reading a JSON file a user or a converter wrote, with one error shape: the path and what is wrong.

``read_json(path, error)`` raises ``error`` (an EdgeslmError subclass: ModelSourceError for a
checkpoint's files, BundleError for a bundle's) naming the file when it cannot be read, is not
UTF-8, is not valid JSON, or does not hold the expected kind of value. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EdgeslmError


def read_json(path: Path, error: type[EdgeslmError], kind: type = dict, hint: str | None = None) -> Any:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}", hint=hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}", hint=hint) from None
    if not isinstance(data, kind):
        raise error(f"{path} does not hold a JSON {'object' if kind is dict else kind.__name__}", hint=hint)
    return data
