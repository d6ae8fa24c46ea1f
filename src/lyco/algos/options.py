"""Per-module algorithm options, resolved from an :class:`~lyco.AdapterConfig` (or read back from a file)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class AlgoOptions:
    """Everything an adapter module needs to build itself.  Field names follow LyCORIS's ``network_args``."""

    algo: str = "lora"
    dim: int = 4
    alpha: float | None = 1.0
    use_tucker: bool = False
    use_scalar: bool = False
    rs_lora: bool = False
    dropout: float = 0.0
    rank_dropout: float = 0.0
    rank_dropout_scale: bool = True
    module_dropout: float = 0.0
    dora_wd: bool = False
    wd_on_output: bool = False
    dora_detach_norm: bool = False
    factor: int = -1
    decompose_both: bool = False
    full_matrix: bool = False
    unbalanced_factorization: bool = False
    block_size: int = 4
    constraint: float = 0.0
    rescaled: bool = False
    train_on_input: bool = False
    init: str = "kaiming"
    path: str = "auto"

    def replace(self, **changes: Any) -> AlgoOptions:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
