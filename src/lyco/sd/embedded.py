"""What a single-file checkpoint written by lyco carries about itself, so that it loads again anywhere lyco runs.

Original-layout (LDM) files hold weights only; the architecture normally comes from the known SD1/SD2/SDXL
configs.  Models of other sizes (``builtin:tiny``, the tests' tiny SD1/SD2/SDXL models, pruned or widened models)
would not load from those, and a non-standard tokenizer (anything but CLIP's 49,408-token vocabulary) cannot be
found in the Hugging Face cache.  :func:`pipeline_metadata` therefore records in the safetensors header

* ``lyco.diffusers_config``: the UNet, VAE, text-encoder and scheduler configs (a few KB of JSON), and
* ``lyco.tokenizer`` / ``lyco.tokenizer_2``: the tokenizer files, only for non-standard vocabularies,

and :func:`configs_from_metadata` / :func:`tokenizers_from_metadata` read them back.  UIs ignore these keys.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CONFIG_KEY = "lyco.diffusers_config"
TOKENIZER_KEYS = {1: "lyco.tokenizer", 2: "lyco.tokenizer_2"}
STANDARD_VOCAB = 49408  # CLIP's BPE vocabulary (SD1, SD2, SDXL): resolved from the usual places instead
_TOKENIZER_FILE_LIMIT = 4 << 20

__all__ = ["CONFIG_KEY", "TOKENIZER_KEYS", "configs_from_metadata", "pipeline_metadata", "tokenizers_from_metadata"]


def _plain(config: Any) -> dict[str, Any]:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _tokenizer_files(tok: Any) -> dict[str, str] | None:
    if tok is None or len(tok) == STANDARD_VOCAB:
        return None
    with tempfile.TemporaryDirectory(prefix="lyco-tok-") as d:
        tok.save_pretrained(d)
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(d).iterdir()) if p.is_file()}
    if sum(len(v) for v in files.values()) > _TOKENIZER_FILE_LIMIT:
        return None
    return files


def pipeline_metadata(pipe: Any) -> dict[str, str]:
    """The ``lyco.*`` metadata describing ``pipe``'s architecture (and non-standard tokenizers)."""
    encoders = [t for t in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
                if t is not None]
    scheduler = getattr(pipe, "scheduler", None)
    cfg = {"pipeline": type(pipe).__name__, "unet": _plain(pipe.unet.config), "vae": _plain(pipe.vae.config),
           "text_encoders": [_plain(t.config) for t in encoders],
           "scheduler": {**_plain(scheduler.config), "_class_name": type(scheduler).__name__} if scheduler else None,
           "force_zeros_for_empty_prompt": bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", True))}
    out = {CONFIG_KEY: json.dumps(cfg, sort_keys=True)}
    for which, name in ((1, "tokenizer"), (2, "tokenizer_2")):
        files = _tokenizer_files(getattr(pipe, name, None))
        if files:
            out[TOKENIZER_KEYS[which]] = json.dumps(files, sort_keys=True)
    return out


def configs_from_metadata(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The recorded configs (``unet``, ``vae``, ``text_encoders`` (CLIPTextConfig), ``scheduler``, ``pipeline``),
    or None when the file has none (or an unreadable entry: the caller falls back to the known configs)."""
    raw = metadata.get(CONFIG_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        from transformers import CLIPTextConfig
        cfg["text_encoders"] = [CLIPTextConfig.from_dict(c) for c in cfg["text_encoders"]]
        _ = cfg["unet"], cfg["vae"], cfg["scheduler"]
    except (ValueError, KeyError, TypeError):
        return None
    return cfg


def tokenizers_from_metadata(metadata: dict[str, str]) -> dict[int, Any]:
    """{1: tokenizer, 2: tokenizer_2} for the tokenizers recorded in the file."""
    from transformers import CLIPTokenizer
    out = {}
    for which, key in TOKENIZER_KEYS.items():
        raw = metadata.get(key)
        if not raw:
            continue
        try:
            files = json.loads(raw)
            with tempfile.TemporaryDirectory(prefix="lyco-tok-") as d:
                for name, text in files.items():
                    (Path(d) / Path(name).name).write_text(text, encoding="utf-8")
                out[which] = CLIPTokenizer.from_pretrained(d, local_files_only=True)
        except (ValueError, OSError, AttributeError):
            continue
    return out
