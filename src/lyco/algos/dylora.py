"""DyLoRA: LoRA trained over nested ranks.  Each training forward trains a random prefix of ``block_size`` blocks
with scale alpha/r_j; evaluation and saving use the full rank.  Files are plain LoRA/LoCon files."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .functional import lora as F_lora
from .geometry import Geometry
from .lora import LoRAModule
from .options import AlgoOptions
from .registry import register


class DyLoRAModule(LoRAModule):
    algo = "dylora"
    grouped_bypass = True
    #: each training step trains a random rank prefix: the other blocks get no gradient
    stochastic_graph = True
    truncatable = True

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        if opts.dim % opts.block_size:
            raise self._err(f"dim ({opts.dim}) must be a multiple of block_size ({opts.block_size})")
        if self.tucker:
            raise self._err("DyLoRA does not use Tucker factors (its files are plain LoCon)")
        self.block_size = opts.block_size
        self._active: int | None = None  # rank used by the current training forward

    # ------------------------------------------------------------------ nested ranks
    def _eff_rank(self) -> int:
        return self._active if self._active is not None else self.rank

    def scale(self) -> float:
        r = self._eff_rank()
        alpha = self.opts.alpha if self.opts.alpha else self.rank
        r_f = r ** 0.5 if self.opts.rs_lora else r
        return float(alpha) / r_f

    def saved_alpha(self, rank: int | None = None) -> float:
        r = rank or self.rank
        alpha = self.opts.alpha if self.opts.alpha else self.rank
        r_f = r ** 0.5 if self.opts.rs_lora else r
        return float(alpha) / r_f * r

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._eff_rank()
        up: torch.Tensor = self.lora_up
        down: torch.Tensor = self.lora_down
        if r == self.rank and self._active is None:
            return up, down
        lo = r - self.block_size
        up = torch.cat([up[:, :lo].detach(), up[:, lo:r]], dim=1)
        down = torch.cat([down[:lo].detach(), down[lo:r]], dim=0)
        return up, down

    def mask_size(self) -> int:
        return self._eff_rank()

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        up, down = self._factors()
        return F_lora.delta(up, down, None, self.geom.weight_shape, mask)

    def lowrank(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        up, down = self._factors()
        return F_lora.lowrank(up, down, None, mask)

    def apply_raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        up, down = self._factors()
        return F_lora.apply(x, self.geom, self._cast(up, x), self._cast(down, x), None, mask)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        if self.training:
            blocks = self.rank // self.block_size
            self._active = (int(torch.randint(blocks, ())) + 1) * self.block_size  # torch's seeded RNG
        try:
            return super().forward(x, base)
        finally:
            self._active = None

    # ------------------------------------------------------------------ files
    def export_truncated(self, rank: int) -> dict[str, torch.Tensor]:
        """LoCon keys truncated to ``rank`` (a multiple of block_size)."""
        out = self.export()
        if rank == self.rank:
            return out
        if rank % self.block_size or not 0 < rank <= self.rank:
            raise self._err(f"truncation rank {rank} must be a positive multiple of block_size {self.block_size} "
                            f"and at most {self.rank}")
        out["lora_up.weight"] = out["lora_up.weight"][:, :rank].clone()
        out["lora_down.weight"] = out["lora_down.weight"][:rank].clone()
        out["alpha"] = torch.tensor(self.saved_alpha(rank), dtype=torch.float32)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["block_size"] = self.block_size
        return d

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return False  # DyLoRA files are LoRA files


register(DyLoRAModule)
