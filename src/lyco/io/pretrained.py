"""``from_pretrained`` with no weight left randomly initialised.

transformers and diffusers load a checkpoint whose keys do not fit the model (a file in another library
version's key layout, a truncated or foreign file) with only a warning: the unmatched weights keep their random
initialisation and everything downstream silently runs on a broken model.  :func:`load_pretrained` makes that
a :class:`~lyco.FileFormatError` naming the keys.  Every place lyco loads a transformers or diffusers model
goes through it.
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import FileFormatError, short_list


def loading_problems(info: dict[str, Any]) -> str:
    """What a ``from_pretrained(..., output_loading_info=True)`` report says went wrong ('' when nothing)."""
    parts = []
    for key, what in (("missing_keys", "weights missing from the checkpoint (left randomly initialised)"),
                      ("unexpected_keys", "checkpoint weights the model does not use"),
                      ("mismatched_keys", "weights of the wrong shape (left randomly initialised)"),
                      ("error_msgs", "errors")):
        items = sorted(str(k[0] if isinstance(k, tuple) else k) for k in (info.get(key) or ()))
        if items:
            parts.append(f"{len(items)} {what}: {short_list(items, 6)}")
    return "; ".join(parts)


def load_pretrained(cls: Any, path: str | os.PathLike[str], *, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, **kwargs)``, raising when any weight is missing, unused or mis-shaped."""
    model, info = cls.from_pretrained(str(path), output_loading_info=True, **kwargs)
    problems = loading_problems(info)
    if problems:
        where = os.path.join(str(path), kwargs["subfolder"]) if kwargs.get("subfolder") else str(path)
        raise FileFormatError(
            f"{where}: the {what} does not fit its checkpoint ({problems}). The file does not match "
            f"{cls.__name__} of the installed library version (it may have been written by another transformers / "
            "diffusers version with a different key layout); load and re-save it with the version that wrote it")
    return model
