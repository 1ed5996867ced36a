"""Greedy imitation on transformer units: (batch, tokens, channels) activations read by a Linear
(a ViT's MLP) and the shared hidden neurons of a gated MLP (gate and up projections multiplied,
read by the down projection), against explicit computations (attention heads: test_heads.py)."""

import pytest
import torch
import torch.nn as nn

from greedyprune import ops
from greedyprune.greedy import SuffixEvaluator, contribution_gram, prune_model
from greedyprune.greedy.suffix import BatchSuffix
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.models import build_model
from greedyprune.models.vit import ViT
from finite_differences import assert_gr_is_the_directional_derivative


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return ViT(num_classes=5, in_channels=3, image_size=8, width=8, depth=2, heads=2, mlp_ratio=3).double().eval()


class RMSNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GatedMlp(nn.Module):
    """Llama's MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.act = nn.SiLU()
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class TinyDecoder(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, vocab]: pre-norm residual blocks of a gated MLP."""

    def __init__(self, vocab: int = 11, width: int = 8, hidden: int = 12, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norms = nn.ModuleList(RMSNorm(width) for _ in range(depth))
        self.mlps = nn.ModuleList(GatedMlp(width, hidden) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.lm_head(self.norm(x))


def tiny_decoder() -> nn.Module:
    torch.manual_seed(1)
    return TinyDecoder().double().eval()


def token_ids(n: int = 6, tokens: int = 5) -> torch.Tensor:
    return torch.randint(0, 11, (n, tokens), generator=torch.Generator().manual_seed(2))


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _inner(graph: UnitGraph):
    return [u for u in graph.units if u.kind == "inner"]


def test_vit_units_are_the_embedding_width_the_mlps_and_the_heads():
    model = tiny_vit()
    graph = UnitGraph(model, images()[:2])
    assert [(u.kind, u.name) for u in graph.units] == [
        ("embed", "patch_embed.proj->blocks.0.attn.qkv+4"), ("heads", "blocks.0.attn.qkv->blocks.0.attn.proj"), ("inner", "blocks.0.mlp.fc1->blocks.0.mlp.fc2"),
        ("heads", "blocks.1.attn.qkv->blocks.1.attn.proj"), ("inner", "blocks.1.mlp.fc1->blocks.1.mlp.fc2")]
    assert all(u.readers[0].channel_last and u.channels == 24 and u.readers[0].columns_per_channel == 1
               for u in _inner(graph))


def test_gated_mlp_is_one_unit_of_both_projections():
    graph = UnitGraph(tiny_decoder(), token_ids()[:2])
    assert [(u.producer, u.co_producers, u.consumer) for u in _inner(graph)] == [
        ("mlps.0.gate_proj", ["mlps.0.up_proj"], "mlps.0.down_proj"),
        ("mlps.1.gate_proj", ["mlps.1.up_proj"], "mlps.1.down_proj")]
    assert _inner(graph)[0].fold_target is None  # a product of producers: gates fold into the consumer only


def _removed(model: nn.Module, unit, drop: int, x) -> torch.Tensor:
    """The model's logits with hidden neuron `drop` of the unit zeroed at its producers."""
    producers = [model.get_submodule(p) for p in [unit.producer] + unit.co_producers]
    saved = [p.weight[drop].clone() for p in producers]
    with torch.no_grad():
        for p in producers:
            p.weight[drop] = 0
            if p.bias is not None:
                p.bias[drop] = 0
        try:
            return model(x)
        finally:
            for p, w in zip(producers, saved):
                p.weight[drop] = w


@pytest.mark.parametrize("make, inputs", [(tiny_vit, images), (tiny_decoder, token_ids)], ids=["vit", "gated"])
@pytest.mark.parametrize("use_fx", [True, False])
def test_gating_a_channel_to_zero_is_removing_it(make, inputs, use_fx):
    model, x = make(), inputs()
    graph = UnitGraph(model, x[:2])
    unit = _inner(graph)[1]
    ev = BatchSuffix(graph, unit, x, kind="mse", use_fx=use_fx)
    n = unit.channels
    assert float(ev.evaluate(torch.ones(n, dtype=torch.float64))) < 1e-20
    gates = torch.ones(n, dtype=torch.float64)
    gates[3] = 0
    expected = (_removed(model, unit, 3, x) - model(x)).pow(2).flatten(1).sum(-1).mean()
    torch.testing.assert_close(ev.evaluate(gates)[0], expected.detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make, inputs", [(tiny_vit, images), (tiny_decoder, token_ids)], ids=["vit", "gated"])
def test_gram_sums_over_tokens(make, inputs):
    model, x = make(), inputs()
    graph = UnitGraph(model, x[:2])
    unit = _inner(graph)[0]
    consumer = graph.module(unit.consumer)
    hidden = {}
    handle = consumer.register_forward_pre_hook(lambda _m, args: hidden.setdefault("x", args[0].detach()))
    model(x)
    handle.remove()
    h = hidden["x"].reshape(-1, unit.channels)  # rows = samples x tokens
    n = unit.channels
    sigma = n * h.T.unsqueeze(-1) * consumer.weight.T.unsqueeze(1)  # [N, rows, out]
    expected = torch.einsum("irc,jrc->ij", sigma, sigma) / h.shape[0]
    # the Gram accumulates float32 GEMMs in float64
    torch.testing.assert_close(contribution_gram(graph, unit, x.split(4)), expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("make, inputs", [(tiny_vit, images), (tiny_decoder, token_ids)], ids=["vit", "gated"])
def test_fixed_steps_and_taylor_scores_on_token_channels(make, inputs):
    model, x = make(), inputs()
    graph = UnitGraph(model, x[:2])
    unit = _inner(graph)[0]
    n = unit.channels
    ev = SuffixEvaluator(graph, unit, x, kind="kl", max_rows=10)
    a = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    a /= a.sum()
    candidates = torch.tensor([5, 0, 2, 2])
    gamma = 0.3
    gates = ((1 - gamma) * a + gamma * torch.eye(n, dtype=torch.float64)[candidates]) * n
    torch.testing.assert_close(ev.evaluate_steps(a, gamma, candidates), ev.evaluate(gates), rtol=1e-9, atol=1e-12)
    one = BatchSuffix(graph, unit, x, kind="kl")
    (act, grad), = one.taylor_inputs(a * n)
    scores = ops.taylor_scores(act, grad, a, 2)
    assert_gr_is_the_directional_derivative(one, a, scores.gr, range(0, n, 5))


@pytest.mark.parametrize("method", ["local", "global", "hybrid"])
def test_transformers_prune_to_the_asked_width(method):
    vit, x = tiny_vit(), images()
    results = prune_model(vit, x, method=method, width_ratio=0.5, progress=False)
    assert [r.width for r in results] == [4, 1, 12, 1, 12]  # embedding width; heads, MLP per block
    assert all(b.mlp.fc1.out_features == 12 and b.mlp.fc2.in_features == 12 and b.attn.num_heads == 1
               for b in vit.blocks)
    assert vit(x).shape == (6, 5)
    decoder, ids = tiny_decoder(), token_ids()
    results = prune_model(decoder, ids, method=method, width_ratio=0.5, progress=False)
    assert [r.width for r in results] == [4, 6, 6]
    for mlp in decoder.mlps:
        assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 6
    assert decoder(ids).shape == (6, 5, 11)


def test_vit_tiny_in_the_zoo_takes_cifar_and_imagenet_sizes():
    small = build_model("vit_tiny", num_classes=10, image_size=32)
    assert small.patch_embed.proj.kernel_size == (4, 4) and small.pos_embed.shape == (1, 65, 192)
    large = build_model("vit_tiny", num_classes=1000, image_size=224)
    assert large.patch_embed.proj.kernel_size == (16, 16) and large.pos_embed.shape == (1, 197, 192)
    assert sum(p.numel() for p in large.parameters()) == 5_717_416  # DeiT-Tiny's count
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


class DictOutput(nn.Module):
    """The decoder returning its logits the way Hugging Face models do: a mapping, or a tuple."""

    def __init__(self, inner: nn.Module, as_tuple: bool):
        super().__init__()
        self.inner, self.as_tuple = inner, as_tuple

    def forward(self, ids):
        logits = self.inner(ids)
        return (logits, ids) if self.as_tuple else {"logits": logits, "hidden": ids}


@pytest.mark.parametrize("as_tuple", [False, True], ids=["dict", "tuple"])
def test_models_returning_a_dict_or_tuple_prune(as_tuple):
    plain = tiny_decoder()
    wrapped = DictOutput(tiny_decoder(), as_tuple)
    ids = token_ids()
    expected = prune_model(plain, ids, method="global", width_ratio=0.5, progress=False)
    got = prune_model(wrapped, ids, method="global", width_ratio=0.5, progress=False)
    assert [r.kept for r in got] == [r.kept for r in expected] and [r.width for r in got] == [4, 6, 6]


@pytest.mark.parametrize("method", ["local", "hybrid"])
def test_hugging_face_llama_from_a_config_prunes_end_to_end(method):
    """A transformers Llama (random weights, no download): its gated MLPs and its key/value groups
    of heads are the units, and pruning reaches the asked width."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    graph = UnitGraph(model, ids[:2])
    assert [(u.producer, u.co_producers, u.consumer) for u in _inner(graph)] == [
        (f"model.layers.{i}.mlp.gate_proj", [f"model.layers.{i}.mlp.up_proj"], f"model.layers.{i}.mlp.down_proj")
        for i in range(2)]
    assert [u.producer for u in graph.units if u.kind == "heads"] == [
        f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    assert not {p for g in graph.skipped for p in g.producers} & {"model.layers.0.self_attn.q_proj"}
    results = prune_model(model, ids, method=method, width_ratio=0.5, progress=False)
    assert [r.width for r in results] == [16, 1, 24, 1, 24]  # hidden size; of 2 key/value groups, of 48 MLP units
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 24
    assert model(ids).logits.shape == (4, 12, 64)
