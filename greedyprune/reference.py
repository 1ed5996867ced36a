"""Plain-PyTorch oracle of every op (contracts: docs/DESIGN.md §2).

Written for clarity, not speed: every backend is tested against these functions,
and `greedyprune.ops` falls back to them when the compiled extension is missing.
Accumulation is float64 throughout, so the oracle is also the accuracy yardstick.
Arguments are assumed valid here; `greedyprune.ops` validates them.
"""
from __future__ import annotations

import math

import torch

from .constants import DIRECTION_EPS


def _result_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- line search


def _candidates(diag, u, v, a, aGa, aGw, wGw):
    """gamma_i and loss_i for every neuron i (float64), docs/DESIGN.md §2.1."""
    if not bool((a != 0).any()):  # empty start: the first neuron takes the whole simplex
        gamma = torch.ones_like(diag)
        return gamma, diag - 2 * v + wGw
    rd = (u - v) - (aGa - aGw)
    dd = diag - 2 * u + aGa
    r2 = aGa - 2 * aGw + wGw
    lo = torch.where(a > 0, -a / (1 - a), torch.zeros_like(a))
    gamma = torch.minimum(torch.maximum(-rd / dd, lo), torch.ones_like(dd))
    loss = r2 + 2 * gamma * rd + gamma * gamma * dd
    skip = (dd <= DIRECTION_EPS * (diag.abs() + abs(aGa))) | (a >= 1)
    gamma = torch.where(skip, torch.zeros_like(gamma), gamma)
    loss = torch.where(skip, torch.full_like(loss, math.inf), loss)
    return gamma, loss


def _first_argmin(x: torch.Tensor) -> int:
    """Index of the smallest entry, lowest index on ties; -1 when nothing is finite."""
    finite = torch.isfinite(x)
    if not bool(finite.any()):
        return -1
    m = x[finite].min()
    return int(torch.nonzero(x == m)[0, 0])


def line_search(G: torch.Tensor, w: torch.Tensor, a: torch.Tensor):
    """Evaluate every candidate move a <- (1-gamma) a + gamma e_i.

    Returns (gamma [N] f64, loss [N] f64, best int64 0-dim); skipped candidates have
    gamma 0 and loss inf; best is -1 when every candidate is skipped.
    """
    Gd, wd, ad = G.double(), w.double(), a.double()
    u, v = Gd @ ad, Gd @ wd
    gamma, loss = _candidates(Gd.diagonal(), u, v, ad, ad @ u, ad @ v, wd @ v)
    return gamma, loss, torch.tensor(_first_argmin(loss), dtype=torch.int64)


def greedy_local(G: torch.Tensor, w: torch.Tensor, max_neurons: int, tol: float, max_steps: int):
    """Whole greedy path of local imitation with closed-form line search.

    Returns (a [N] f64, order [max_steps] int64 padded with -1,
    losses [max_steps] f64 padded with inf): the neuron touched at every step and
    ||f - F||^2 after it. The first step always takes the best single neuron; the
    path stops when loss <= tol, nnz(a) == max_neurons, no candidate lowers the
    loss, or after max_steps steps.
    """
    Gd, wd = G.double(), w.double()
    n = Gd.shape[0]
    # a sum per row, not a GEMV: equal rows (duplicated neurons) get bit-equal sums, so exact ties
    # stay exact and go to the lower index (a BLAS GEMV may round equal rows differently)
    diag, v = Gd.diagonal(), (Gd * wd).sum(dim=1)
    wGw = float(wd @ v)
    a, u = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    aGa = aGw = 0.0
    nnz = 0
    order = torch.full((max_steps,), -1, dtype=torch.int64)
    losses = torch.full((max_steps,), math.inf, dtype=torch.float64)
    for step in range(max_steps):
        r2 = aGa - 2 * aGw + wGw
        gamma, loss = _candidates(diag, u, v, a, aGa, aGw, wGw)
        i = _first_argmin(loss)
        if i < 0 or (nnz > 0 and not float(loss[i]) < r2):  # step 0 always takes the best
            break
        g = float(gamma[i])
        removes = a[i] > 0 and g == float(-a[i] / (1 - a[i]))
        u_i = float(u[i])
        aGa = (1 - g) ** 2 * aGa + 2 * g * (1 - g) * u_i + g * g * float(diag[i])
        aGw = (1 - g) * aGw + g * float(v[i])
        u = (1 - g) * u + g * Gd[i]
        was_zero = a[i] == 0
        a = (1 - g) * a
        a[i] += g
        if removes:
            a[i] = 0.0
            nnz -= 1
        elif g == 1.0:
            nnz = 1
        elif was_zero:
            nnz += 1
        order[step] = i
        losses[step] = aGa - 2 * aGw + wGw
        if losses[step] <= tol or nnz >= max_neurons:
            break
    return a, order, losses


# ------------------------------------------------------------ taylor scores


def taylor_scores(act: torch.Tensor, grad: torch.Tensor, a: torch.Tensor, k: int):
    """r_i = sum_{b,*} grad*act over channel i, gr = r - a.r, the k most negative gr."""
    dims = [0] + list(range(2, act.dim()))
    r = (act.double() * grad.double()).sum(dim=dims)
    gr = r - a.double() @ r
    topk = torch.sort(gr, stable=True).indices[:k]
    out = _result_dtype(act)
    return r.to(out), gr.to(out), topk


# --------------------------------------------------------- segmented select


def _segments(offsets: torch.Tensor):
    o = offsets.tolist()
    return list(zip(o[:-1], o[1:]))


def _rank(values: torch.Tensor) -> torch.Tensor:
    """rank[i] = position of entry i in the order (value desc, index asc)."""
    order = torch.sort(values, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(values.numel())
    return rank


def segment_select(values, offsets, k, eligible=None, largest=True):
    """Per segment l, the k[l] largest (or smallest) eligible values; ties: lower index."""
    out = torch.zeros(values.shape, dtype=torch.bool)
    for seg, (b, e) in enumerate(_segments(offsets)):
        idx = torch.arange(b, e)
        if eligible is not None:
            idx = idx[eligible[b:e]]
        order = torch.sort(values[idx].double(), descending=largest, stable=True).indices
        out[idx[order[: int(k[seg])]]] = True
    return out


def popup_swap(scores, offsets, keep, rate):
    """SR-popup restricted swap (seed 002 eqs. 28-30), per segment, keep counts constant.

    Returns (new_keep bool, q int64 [L]).
    """
    new_keep = keep.clone()
    qs = []
    for b, e in _segments(offsets):
        rank = _rank(scores[b:e].double())
        kp = keep[b:e]
        top = rank < int(kp.sum())
        phi, psi = kp & ~top, top & ~kp  # would be dropped / would be revived
        s = int(psi.sum())
        q = math.ceil(s * rate)
        qs.append(q)
        if q == 0:
            continue
        leave = torch.nonzero(phi).flatten()
        leave = leave[torch.sort(rank[leave], descending=True).indices[:q]]
        join = torch.nonzero(psi).flatten()
        join = join[torch.sort(rank[join]).indices[:q]]
        new_keep[b + leave] = False
        new_keep[b + join] = True
    return new_keep, torch.tensor(qs, dtype=torch.int64)


# ---------------------------------------------------------------- PQ norms


def pq_norms(w, offsets, powers, mask=None):
    """Per segment: log sum |w|^p for every p in powers (masked entries), and the count.

    Returns (log_sums [L, P] f64, counts [L] int64); empty or all-zero segments give -inf.
    """
    x = w.reshape(-1).double().abs()
    segs = _segments(offsets)
    log_sums = torch.empty(len(segs), len(powers), dtype=torch.float64)
    counts = torch.empty(len(segs), dtype=torch.int64)
    for s, (b, e) in enumerate(segs):
        xs = x[b:e] if mask is None else x[b:e][mask.reshape(-1)[b:e]]
        counts[s] = xs.numel()
        # log sum x^p = p log M + log sum (x/M)^p with M = max x: no under- or overflow
        m = xs.max() if xs.numel() else torch.tensor(0.0, dtype=torch.float64)
        for j, p in enumerate(powers):
            log_sums[s, j] = p * torch.log(m) + torch.log(torch.sum((xs / m) ** p)) if m > 0 else -math.inf
    return log_sums, counts
