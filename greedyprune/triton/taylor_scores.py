"""taylor_scores in Triton (docs/DESIGN.md §2.2).

Stage 1 (Triton): program (i, t) sums act*grad over the t-th block of channel i's
B*S elements (float32); stage 2 (torch): the blocks of every channel are added in
float64 in a fixed order, then gr = r - a.r and a stable sort gives the top-k.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 1024


@triton.jit
def _channel_block_sums(act_ptr, grad_ptr, part_ptr, N, S, BS, T, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    t = tl.program_id(1)
    k = t.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = k < BS
    b = k // S
    off = (b * N + i) * S + (k - b * S)
    x = tl.load(act_ptr + off, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(grad_ptr + off, mask=inside, other=0.0).to(tl.float32)
    tl.store(part_ptr + i * T + t, tl.sum(x * y, axis=0))


@triton_op("greedyprune_triton::taylor_scores", mutates_args=())
def taylor_scores(act: torch.Tensor, grad: torch.Tensor, a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N = act.shape[0], act.shape[1]
    S = act[0, 0].numel() if B > 0 and N > 0 else 0
    T = max(1, triton.cdiv(B * S, BLOCK))
    part = torch.zeros(N, T, dtype=torch.float32, device=act.device)
    if B * S > 0 and N > 0:
        wrap_triton(_channel_block_sums)[(N, T)](act.contiguous(), grad.contiguous(), part, N, S, B * S, T, BLOCK=BLOCK)
    r = part.double().sum(dim=1)
    gr = r - a.double() @ r
    topk = torch.sort(gr, stable=True).indices[:k]
    return r.float(), gr.float(), topk
