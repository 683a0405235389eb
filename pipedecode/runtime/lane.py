"""Where a stage's kernels run: a `Lane` (the SMs they plan for and, in co-resident mode, what
each persistent CTA may hold of an SM).

Owns `Lane` and `coresident_lanes`, the sizing of co-resident mode's two sides on every SM: the
persistent TMA decode attention, one program per SM within a shared-memory budget (its ring, q
and P as `_attention_tma_plan.choose_config` plans them; `MAXNREG` registers x 256 threads), and
the persistent Triton matmul, one CTA per SM, within what that leaves of the SM's 228 KiB of
shared memory and 65,536 registers (`tiling.TileBudget`). Llama-3-8B's attention within 64 KiB
plans 61,552 bytes and 12,288 registers, which leaves 169,872 bytes and 53,248 registers: the
128x256 tile at 3 stages (147,456 bytes, about 204 registers x 256 threads) fits beside it.
Pure Python: knows nothing of streams, graphs or schedules; `ops.KernelSet` reads a lane.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode.runtime.kernels import _attention_tma_plan as tma_plan
from pipedecode.runtime.kernels.tiling import PAIR_TILES, TILES, TileBudget, fit_tile

REGISTERS_PER_SM = 65536             # Hopper's register file per SM (32-bit registers)
DEFAULT_ATTENTION_SMEM_BYTES = 64 * 1024    # the budget measured co-resident on the H200


@dataclass(frozen=True)
class Lane:
    """`sm_count` SMs (None: the whole GPU); co-resident when `smem_bytes` is set: each kernel
    launches one persistent CTA per SM holding at most `smem_bytes` of shared memory and
    `registers` registers (per thread x threads)."""

    sm_count: int | None = None
    smem_bytes: int | None = None
    registers: int | None = None

    def __post_init__(self) -> None:
        for name in ("sm_count", "smem_bytes", "registers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value
                                      or value <= 0):
                raise ValueError(f"Lane.{name} must be a positive integer or None, got {value!r}")
        if (self.smem_bytes is None) != (self.registers is None):
            raise ValueError("Lane: a co-resident lane sets both smem_bytes and registers")
        if self.smem_bytes is not None and self.sm_count is None:
            raise ValueError("Lane: a co-resident lane names its SM count (one CTA per SM)")

    @property
    def coresident(self) -> bool:
        return self.smem_bytes is not None

    @property
    def tile_budget(self) -> TileBudget | None:
        """What a matmul CTA may hold in this lane (None: no bound)."""
        return TileBudget(self.smem_bytes, self.registers) if self.coresident else None

    @classmethod
    def of(cls, where: "Lane | int | None") -> "Lane":
        """A lane from a lane, an SM count, or None (the whole GPU)."""
        if isinstance(where, Lane):
            return where
        return cls(None if where is None else int(where))


@dataclass(frozen=True)
class AttentionFootprint:
    """What one persistent attention program holds of an SM."""

    smem_bytes: int          # planned dynamic shared memory
    registers: int           # maxnreg x threads


def attention_footprint(smem_budget_bytes: int, head_dim: int, group: int,
                        element_size: int = 2) -> AttentionFootprint:
    """The TMA attention's footprint within `smem_budget_bytes` (ValueError where the budget is
    too small for head_dim), as its launch plan would size it."""
    geom = tma_plan.CacheGeometry(1, group, 1, head_dim, 1, 0, element_size)
    cfg = tma_plan.choose_config(geom, smem_budget_bytes)
    smem = tma_plan.smem_bytes(cfg.block_n, cfg.num_slots, head_dim, geom.group_pad,
                               element_size)
    threads = 32 * (tma_plan.CONSUMER_WARPS + 4)
    return AttentionFootprint(smem, tma_plan.MAXNREG[(cfg.block_n, geom.group_pad)] * threads)


def coresident_lanes(sm_count: int, attention_smem_bytes: int, head_dim: int, group: int,
                     element_size: int = 2) -> tuple[Lane, Lane]:
    """(attention lane, compute lane) sharing every one of `sm_count` SMs: the attention within
    `attention_smem_bytes`, the matmul within the rest of each SM. ValueError, saying why, where
    no matmul tile fits beside the attention."""
    att = attention_footprint(attention_smem_bytes, head_dim, group, element_size)
    reserved = tma_plan.CTA_RESERVED_BYTES
    smem_left = tma_plan.SMEM_PER_SM_BYTES - (att.smem_bytes + reserved) - reserved
    regs_left = REGISTERS_PER_SM - att.registers
    if smem_left <= 0 or regs_left <= 0:
        raise ValueError(f"an attention within {attention_smem_bytes} bytes leaves no room for "
                         f"a matmul CTA on the SM")
    budget = TileBudget(min(smem_left, tma_plan.SMEM_PER_CTA_MAX_BYTES), regs_left)
    for pair, tiles in ((False, TILES), (True, PAIR_TILES)):
        if fit_tile(tiles[-1], pair, budget) is None:
            raise ValueError(f"an attention within {attention_smem_bytes} bytes ({att.smem_bytes} "
                             f"planned, {att.registers} registers) leaves {budget}, too little "
                             f"for the smallest matmul tile")
    return (Lane(sm_count, attention_smem_bytes, att.registers),
            Lane(sm_count, budget.smem_bytes, budget.registers))
