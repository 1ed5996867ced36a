"""Taylor scores: gr is the directional derivative of the gated loss towards e_i."""
import torch

from greedyprune import ops


def test_gr_equals_finite_differences_of_the_gated_loss(backend):
    torch.manual_seed(0)
    B, N, H = 8, 6, 5
    hidden = torch.randn(B, N, H, H, dtype=torch.float64)
    head = torch.nn.Conv2d(N, 3, 3, dtype=torch.float64)
    target = torch.randn(B, 3, H - 2, H - 2, dtype=torch.float64)
    a = torch.tensor([0.5, 0.0, 0.25, 0.0, 0.25, 0.0], dtype=torch.float64)

    def loss(gates):  # gates c = N a multiply the hidden channels
        return ((head(hidden * gates.view(1, N, 1, 1)) - target) ** 2).mean()

    gates = (N * a).requires_grad_(True)
    gated = hidden * gates.view(1, N, 1, 1)
    gated.retain_grad()
    ((head(gated) - target) ** 2).mean().backward()
    res = ops.taylor_scores(hidden, gated.grad, a, 3, backend=backend)
    eps = 1e-6
    for i in range(N):
        e = torch.zeros(N, dtype=torch.float64)
        e[i] = 1
        # d/dgamma loss(N((1-gamma) a + gamma e_i)) at 0 = N * (r_i - a.r) = N * gr_i
        with torch.no_grad():
            fd = (loss(N * ((1 - eps) * a + eps * e)) - loss(N * ((1 + eps) * a - eps * e))) / (2 * eps)
        assert abs(float(fd) - N * float(res.gr[i])) < 1e-6 * (1 + abs(float(fd)))
    assert res.topk.tolist() == torch.sort(res.gr, stable=True).indices[:3].tolist()


def test_k_zero_and_k_n(backend):
    act, grad = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    a = torch.full((5,), 0.2)
    assert ops.taylor_scores(act, grad, a, 0, backend=backend).topk.numel() == 0
    assert sorted(ops.taylor_scores(act, grad, a, 5, backend=backend).topk.tolist()) == list(range(5))
