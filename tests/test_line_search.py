"""Local imitation's line search and greedy path, against explicit contributions."""
import pytest
import torch

from greedyprune import ops
from greedyprune.ops.line_search import MAX_STEPS_PER_NEURON
from samples import gram, simplex_point


def contributions(n=12, dims=40, seed=0):
    """Explicit sigma_i (rows), so every loss can be evaluated by brute force."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(3, dims, generator=g, dtype=torch.float64)
    sigma = torch.randn(n, 3, generator=g, dtype=torch.float64) @ base + 0.5 * torch.randn(n, dims, generator=g, dtype=torch.float64)
    return sigma, sigma @ sigma.T / dims


def discrepancy(sigma, a, w):
    r = (a - w) @ sigma
    return float(r @ r / sigma.shape[1])


@pytest.mark.parametrize("nnz", [0, 1, 3, 7])
def test_line_search_is_the_exact_minimum_over_gamma(backend, nnz):
    sigma, G = contributions()
    n = G.shape[0]
    w = torch.full((n,), 1 / n, dtype=torch.float64)
    a = simplex_point(n, nnz, seed=nnz) if nnz else torch.zeros(n, dtype=torch.float64)
    res = ops.line_search(G, w, a, backend=backend)
    best_brute = (float("inf"), -1)
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1
        if float(res.loss[i]) == float("inf"):  # skipped: the move cannot change f
            assert torch.equal(a, e)
            continue
        if nnz == 0:  # the empty start can only take the whole simplex
            grid = torch.tensor([1.0], dtype=torch.float64)
        else:
            lo = -a[i] / (1 - a[i]) if a[i] > 0 else 0.0
            grid = torch.linspace(float(lo), 1.0, 2001, dtype=torch.float64)
        brute = min(discrepancy(sigma, (1 - g) * a + g * e, w) for g in grid)
        g_op = float(res.gamma[i])
        at_op = discrepancy(sigma, (1 - g_op) * a + g_op * e, w)
        assert at_op == pytest.approx(float(res.loss[i]), rel=1e-9, abs=1e-12)
        assert float(res.loss[i]) <= brute + 1e-12  # closed form is never worse than the grid
        assert float(res.loss[i]) >= brute - 1e-3 * (brute + 1e-9)  # and the grid is near it
        best_brute = min(best_brute, (float(res.loss[i]), i))
    assert int(res.best) == best_brute[1]


def test_removal_step_sets_the_neuron_to_zero(backend):
    """A neuron that only hurts is removed: gamma = lo_i = -a_i/(1-a_i) gives a_i = 0."""
    sigma, G = contributions(n=6, seed=3)
    n = 6
    w = torch.zeros(n, dtype=torch.float64)
    w[:3] = 1 / 3
    a = torch.tensor([0.3, 0.3, 0.0, 0.0, 0.0, 0.4], dtype=torch.float64)  # neuron 5 is not in F
    res = ops.line_search(G, w, a, backend=backend)
    lo = -0.4 / 0.6
    g = float(res.gamma[5])
    assert g >= lo - 1e-15
    if g == lo:
        new_a = (1 - g) * a
        new_a[5] += g
        assert abs(float(new_a[5])) < 1e-15


def test_vertex_candidate_is_skipped(backend):
    G = gram(5, torch.float64)
    a = torch.zeros(5, dtype=torch.float64)
    a[2] = 1
    res = ops.line_search(G, None, a, backend=backend)
    assert res.loss[2] == float("inf") and res.gamma[2] == 0


def test_all_skipped_gives_best_minus_one(backend):
    G = torch.ones(1, 1, dtype=torch.float64)
    res = ops.line_search(G, None, torch.ones(1, dtype=torch.float64), backend=backend)
    assert int(res.best) == -1


def test_ties_take_the_lowest_index(backend):
    G = torch.eye(4, dtype=torch.float64)
    res = ops.line_search(G, backend=backend)
    assert int(res.best) == 0
    path = ops.greedy_local(G, backend=backend)
    assert path.order.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(path.a, torch.full((4,), 0.25, dtype=torch.float64))


def test_greedy_path_replays_line_search_steps(backend):
    """Every step of greedy_local is the argmin of line_search at the current a."""
    sigma, G = contributions(n=16, seed=5)
    n = 16
    w = torch.full((n,), 1 / n, dtype=torch.float64)
    path = ops.greedy_local(G, w, max_neurons=8, backend=backend)
    a = torch.zeros(n, dtype=torch.float64)
    for i, loss in zip(path.order.tolist(), path.losses.tolist()):
        ls = ops.line_search(G, w, a, backend=backend)
        assert int(ls.best) == i
        g = float(ls.gamma[i])
        a = (1 - g) * a
        a[i] += g
        if float(ls.loss[i]) == float("inf"):
            pytest.fail("took a skipped candidate")
        a[a.abs() < 1e-15] = 0
        assert discrepancy(sigma, a, w) == pytest.approx(loss, rel=1e-8, abs=1e-12)
    torch.testing.assert_close(a, path.a, rtol=1e-9, atol=1e-12)
    assert int((path.a > 0).sum()) <= 8
    assert abs(float(path.a.sum()) - 1) < 1e-12
    assert all(x >= y - 1e-12 for x, y in zip(path.losses[1:].tolist(), path.losses[2:].tolist()))


def test_stops_at_tolerance_and_budget(backend):
    G = gram(30, torch.float64, seed=2)
    full = ops.greedy_local(G, backend=backend)
    tol = float(full.losses[len(full.losses) // 2])
    short = ops.greedy_local(G, tol=tol, backend=backend)
    assert float(short.losses[-1]) <= tol and (len(short.losses) == 1 or float(short.losses[-2]) > tol)
    capped = ops.greedy_local(G, max_neurons=5, backend=backend)
    assert int((capped.a > 0).sum()) == 5
    steps = ops.greedy_local(G, max_steps=3, backend=backend)
    assert len(steps.order) == 3
    assert steps.capped and not (full.capped or short.capped or capped.capped)


def test_capped_is_false_when_the_rule_stops_at_the_last_allowed_step(backend):
    G = torch.eye(4, dtype=torch.float64)
    assert not ops.greedy_local(G, max_steps=4, backend=backend).capped  # the 4th neuron is the last
    assert ops.greedy_local(G, max_steps=3, backend=backend).capped
    full = ops.greedy_local(G, backend=backend)
    assert not ops.greedy_local(G, tol=float(full.losses[1]), max_steps=2, backend=backend).capped


def duplicated_columns_gram(n=64, rows=64, seed=0):
    """Gram of n / 2 random contributions, each twice (duplicated neurons)."""
    x = torch.randn(rows, n // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.repeat(1, 2).T @ x.repeat(1, 2) / rows


def test_default_max_steps_lets_duplicated_columns_reach_the_stopping_rule(backend):
    """The path re-weights the copies for many steps per neuron: a cap of 4 * N steps
    cut it short, the default reaches its own stopping rule."""
    n = 64
    G = duplicated_columns_gram(n)
    path = ops.greedy_local(G, backend=backend)
    assert not path.capped and 4 * n < len(path.order) < MAX_STEPS_PER_NEURON * n
    short = ops.greedy_local(G, max_steps=4 * n, backend=backend)
    assert short.capped and torch.equal(short.order, path.order[: 4 * n])


def test_local_imitation_matches_exhaustive_search_on_a_small_problem(backend):
    """With n = 1 the greedy choice is the best single neuron by brute force."""
    sigma, G = contributions(n=9, seed=7)
    w = torch.full((9,), 1 / 9, dtype=torch.float64)
    path = ops.greedy_local(G, w, max_neurons=1, backend=backend)
    losses = [discrepancy(sigma, torch.eye(9, dtype=torch.float64)[i], w) for i in range(9)]
    assert path.order.tolist() == [min(range(9), key=losses.__getitem__)]
