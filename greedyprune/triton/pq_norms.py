"""pq_norms in Triton: log power sums per segment (docs/DESIGN.md §2.4).

Stage 1 (Triton): fixed-size tiles of the flat input, each inside one segment,
write their largest |w|, their count and the power sums of |w| / max (every term
in [0, 1]: no overflow for any p). Stage 2 (torch, float64): each segment rescales
its tiles' sums to the segment's max and adds them in tile order (deterministic).
Tiles are mapped to (segment, chunk) on the device, so nothing waits on the host.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 1024


@triton.jit
def _tile_partials(w_ptr, mask_ptr, start_ptr, stop_ptr, powers_ptr, max_ptr, sums_ptr, count_ptr, P,
                   HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    tile = tl.program_id(0)
    start = tl.load(start_ptr + tile)
    stop = tl.load(stop_ptr + tile)
    idx = start + tl.arange(0, BLOCK)
    inside = idx < stop
    if HAS_MASK:
        inside = inside & (tl.load(mask_ptr + idx, mask=inside, other=0) != 0)
    x = tl.abs(tl.load(w_ptr + idx, mask=inside, other=0.0).to(tl.float32))
    x = tl.where(inside, x, 0.0)
    m = tl.max(x, axis=0)
    tl.store(max_ptr + tile, m)
    tl.store(count_ptr + tile, tl.sum(inside.to(tl.int64), axis=0))
    scaled = x / tl.where(m > 0, m, 1.0)
    log2_scaled = tl.log2(tl.where(scaled > 0, scaled, 1.0))
    for j in range(P):
        p = tl.load(powers_ptr + j)
        terms = tl.where(scaled > 0, tl.exp2(p * log2_scaled), 0.0)
        tl.store(sums_ptr + tile * P + j, tl.sum(terms, axis=0))


def _segment_sums(values: torch.Tensor, tile_end: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """Sum of the consecutive tiles of every segment, as differences of a prefix sum
    (float64 here: every segment's sum is >= 1, so the differences stay accurate)."""
    prefix = torch.cat([values.new_zeros((1,) + values.shape[1:]), values.cumsum(0)])
    return prefix[tile_end] - prefix[tile_end - tiles]


@triton_op("greedyprune_triton::pq_norms", mutates_args=())
def pq_norms(w: torch.Tensor, offsets: torch.Tensor, powers: list[float],
             mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    n, L, P = w.numel(), offsets.numel() - 1, len(powers)
    dev = w.device
    if L == 0:
        return torch.empty(0, P, dtype=torch.float64, device=dev), torch.empty(0, dtype=torch.int64, device=dev)
    lengths = offsets[1:] - offsets[:-1]
    tiles = (lengths + BLOCK - 1) // BLOCK
    tile_end = tiles.cumsum(0)
    grid = triton.cdiv(n, BLOCK) + L  # at least the tiles needed; the rest get empty ranges
    tile_ids = torch.arange(grid, device=dev)
    seg = torch.searchsorted(tile_end, tile_ids, right=True)
    used = seg < L
    seg = seg.clamp(max=L - 1)
    chunk = tile_ids - (tile_end[seg] - tiles[seg])
    start = torch.where(used, offsets[seg] + chunk * BLOCK, 0)
    stop = torch.where(used, offsets[seg + 1], 0)
    tile_max = torch.empty(grid, dtype=torch.float32, device=dev)
    tile_sums = torch.empty(grid, P, dtype=torch.float32, device=dev)
    tile_count = torch.empty(grid, dtype=torch.int64, device=dev)
    flat = w.reshape(-1)
    wrap_triton(_tile_partials)[(grid,)](
        flat, mask.reshape(-1).view(torch.uint8) if mask is not None else flat, start, stop,
        torch.tensor(powers, dtype=torch.float32, device=dev), tile_max, tile_sums, tile_count, P,
        HAS_MASK=mask is not None, BLOCK=BLOCK)
    # Unused tiles are empty (max 0), so they leave every segment's max unchanged.
    seg_max = torch.zeros(L, dtype=torch.float64, device=dev).scatter_reduce(0, seg, tile_max.double(), "amax")
    tile_seg_max = seg_max[seg]
    ratio = torch.where(tile_seg_max > 0, tile_max.double() / tile_seg_max, 0.0)
    p = torch.tensor(powers, dtype=torch.float64, device=dev)
    sums = _segment_sums(ratio[:, None] ** p[None, :] * tile_sums.double(), tile_end, tiles)
    log_sums = torch.log(sums) + p[None, :] * torch.log(seg_max)[:, None]
    return log_sums, _segment_sums(tile_count, tile_end, tiles)
