"""line_search in Triton (docs/DESIGN.md §2.1): u = G a and v = G w in one read of
G (float64 accumulation), then every candidate's clipped step and loss, in float64.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..constants import DIRECTION_EPS

BLOCK_ROWS, BLOCK_COLS, BLOCK = 32, 64, 1024


@triton.jit
def _gram_matvec2(G_ptr, a_ptr, w_ptr, u_ptr, v_ptr, N, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    acc_u = tl.zeros([BLOCK_ROWS], dtype=tl.float64)
    acc_v = tl.zeros([BLOCK_ROWS], dtype=tl.float64)
    for c0 in range(0, N, BLOCK_COLS):
        cols = c0 + tl.arange(0, BLOCK_COLS)
        inside = (rows[:, None] < N) & (cols[None, :] < N)
        g = tl.load(G_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], mask=inside, other=0.0).to(tl.float64)
        av = tl.load(a_ptr + cols, mask=cols < N, other=0.0)
        wv = tl.load(w_ptr + cols, mask=cols < N, other=0.0)
        acc_u += tl.sum(g * av[None, :], axis=1)
        acc_v += tl.sum(g * wv[None, :], axis=1)
    tl.store(u_ptr + rows, acc_u, mask=rows < N)
    tl.store(v_ptr + rows, acc_v, mask=rows < N)


@triton.jit
def _candidates(diag_ptr, u_ptr, v_ptr, a_ptr, stats_ptr, gamma_ptr, loss_ptr, N, eps, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = i < N
    aGa = tl.load(stats_ptr + 0)
    aGw = tl.load(stats_ptr + 1)
    wGw = tl.load(stats_ptr + 2)
    empty = tl.load(stats_ptr + 3) != 0
    diag = tl.load(diag_ptr + i, mask=inside, other=0.0)
    u = tl.load(u_ptr + i, mask=inside, other=0.0)
    v = tl.load(v_ptr + i, mask=inside, other=0.0)
    a = tl.load(a_ptr + i, mask=inside, other=0.0)
    rd = (u - v) - (aGa - aGw)
    dd = diag - 2 * u + aGa
    r2 = aGa - 2 * aGw + wGw
    lo = tl.where(a > 0, -a / (1 - tl.where(a < 1, a, 0.0)), 0.0)  # a = 1 is skipped below
    step = -rd / tl.where(dd != 0, dd, 1.0)
    g = tl.minimum(tl.maximum(step, lo), 1.0)
    loss = r2 + 2 * g * rd + g * g * dd
    skip = (dd <= eps * (tl.abs(diag) + tl.abs(aGa))) | (a >= 1)
    gamma = tl.where(skip, 0.0, g)
    loss = tl.where(skip, float("inf"), loss)
    gamma = tl.where(empty, 1.0, gamma)
    loss = tl.where(empty, diag - 2 * v + wGw, loss)
    tl.store(gamma_ptr + i, gamma, mask=inside)
    tl.store(loss_ptr + i, loss, mask=inside)


@triton_op("greedyprune_triton::line_search", mutates_args=())
def line_search(G: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = G.shape[0]
    dev = G.device
    ad, wd = a.double().contiguous(), w.double().contiguous()
    u = torch.empty(n, dtype=torch.float64, device=dev)
    v = torch.empty(n, dtype=torch.float64, device=dev)
    wrap_triton(_gram_matvec2)[(triton.cdiv(n, BLOCK_ROWS),)](G.contiguous(), ad, wd, u, v, n,
                                                                BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    empty = (ad == 0).all().double()
    stats = torch.stack([ad @ u, ad @ v, wd @ v, empty])
    diag = G.diagonal().double().contiguous()
    gamma = torch.empty(n, dtype=torch.float64, device=dev)
    loss = torch.empty(n, dtype=torch.float64, device=dev)
    wrap_triton(_candidates)[(triton.cdiv(n, BLOCK),)](diag, u, v, ad, stats, gamma, loss, n, DIRECTION_EPS, BLOCK=BLOCK)
    best = torch.argmin(loss)  # first index of the minimum
    best = torch.where(torch.isinf(loss[best]), -1, best)
    return gamma, loss, best
