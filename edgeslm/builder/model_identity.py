"""The manifest's model and chat sections, read from the source checkpoint's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle.manifest import ChatInfo, FileEntry, ModelInfo
from ..errors import ModelSourceError
from ..json_files import read_json
from .source import SourceModel


def model_info(source: SourceModel) -> ModelInfo:
    cfg = source.config
    try:
        return ModelInfo(
            name=source.name,
            architecture=source.architecture,
            model_type=str(cfg.get("model_type", "")),
            parameter_count=source.parameter_count,
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            num_key_value_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            vocab_size=int(cfg["vocab_size"]),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            source_files=tuple(FileEntry(w.path, w.size, w.sha256) for w in source.weight_files),
            hub_id=source.hub_id or "",
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(f"{source.path}/config.json lacks a usable {exc}") from None


def chat_info(model_dir: Path, stop_tokens: tuple[str, ...]) -> ChatInfo:
    tok_config = _json(model_dir / "tokenizer_config.json")
    template = tok_config.get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
    if not template:
        raise ModelSourceError(f"{model_dir} has no chat template (tokenizer_config.json 'chat_template')",
                               hint="use an instruct checkpoint, which ships its chat template")
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelSourceError(f"{model_dir} has no tokenizer.json", hint="copy the tokenizer files too")
    tokenizer = _json(tokenizer_json)
    special = {t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens", []) if t.get("special")}
    vocab = tokenizer.get("model", {}).get("vocab", {})
    ids = []
    for token in stop_tokens:
        token_id = special.get(token, vocab.get(token) if isinstance(vocab, dict) else None)
        if token_id is None:
            raise ModelSourceError(f"stop token {token!r} of the recipe is not in {tokenizer_json}")
        ids.append(int(token_id))
    eos = _json(model_dir / "generation_config.json").get("eos_token_id")
    for extra in (eos if isinstance(eos, list) else [eos] if eos is not None else []):
        if int(extra) not in ids:
            ids.append(int(extra))
    id_to_token = {v: k for k, v in special.items()}
    return ChatInfo(
        template=template,
        stop_token_ids=tuple(ids),
        stop_tokens=tuple(id_to_token.get(i, str(i)) for i in ids),
        bos_token=_token_text(tok_config.get("bos_token")),
        eos_token=_token_text(tok_config.get("eos_token")),
        add_bos_token=bool(tok_config.get("add_bos_token", False)),
        special_tokens=special,
    )


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, ModelSourceError, kind=object)
    return data if isinstance(data, dict) else {}
