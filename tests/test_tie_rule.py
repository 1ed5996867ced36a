"""Exact ties in local imitation go to the lower index (docs/DESIGN.md §2.1) on every CPU backend:
on a Gram whose columns are exact copies (N = 64), a move towards a copy ties with the same move
towards the original, bit for bit."""
import pytest
import torch

from greedyprune import ops

N, BASE = 64, 16  # each of BASE random contributions appears N / BASE times
STEPS = 2 * BASE  # past the adds of every contribution, before the path creeps by rounding-sized steps


def _copies_gram(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G [N, N] whose column j is exactly column j mod BASE (rows too), and that map."""
    x = torch.randn(256, BASE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    base = torch.arange(N) % BASE
    return (x.T @ x / 256)[base][:, base].contiguous(), base


def _lower_index_choice(loss: torch.Tensor, a: torch.Tensor, base: torch.Tensor) -> int:
    """The lowest index among the copies of the best move's neuron that stand where it stands."""
    i = int(torch.argmin(loss))
    tied = (base == base[i]) & (a == a[i]) & (loss == loss[i])
    return int(tied.nonzero()[0, 0])


@pytest.mark.parametrize("seed", range(4))
def test_exact_ties_between_copies_go_to_the_lower_index(backend, seed):
    G, base = _copies_gram(seed)
    path = ops.greedy_local(G, max_steps=STEPS, backend=backend)
    a = torch.zeros(N, dtype=torch.float64)
    for step, i in enumerate(path.order.tolist()):  # replayed with line_search, the same rule
        ls = ops.line_search(G, a=a, backend=backend)
        assert int(ls.best) == i == _lower_index_choice(ls.loss, a, base), step
        g = float(ls.gamma[i])
        a = (1 - g) * a
        a[i] += g
        a[a.abs() < 1e-15] = 0


def test_the_reference_and_the_compiled_backend_choose_the_same_copies():
    if not ops.HAS_C:
        pytest.skip("compiled extension greedyprune._C not built")
    for seed in range(4):
        G, _ = _copies_gram(seed)
        reference = ops.greedy_local(G, max_steps=STEPS, backend="reference").order
        compiled = ops.greedy_local(G, max_steps=STEPS, backend="cpu").order
        assert torch.equal(reference, compiled)
        assert reference.max() < BASE  # only the lowest copy of each contribution is ever taken
