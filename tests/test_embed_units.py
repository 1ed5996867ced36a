"""A transformer's embedding width as a unit (surgery.py kind "embed", models/norms.py): a residual
stream read through LayerNorms or RMSNorms, whose statistics a gated forward takes over the kept
channels, so that removing channels is the gated network; on greedyprune's ViT, a decoder with a
hand-written RMSNorm, and Hugging Face Llama (RMSNorm traced op by op) and ViT models."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from greedyprune import ops
from greedyprune.greedy import prune_model
from greedyprune.greedy.outputs import discrepancy, logits_of
from greedyprune.greedy.suffix import BatchSuffix
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.models.norms import kept_channel_norm, norm_refusal
from greedyprune.models.vit import ViT
from finite_differences import assert_gr_is_the_directional_derivative


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = ViT(num_classes=5, in_channels=3, image_size=8, width=12, depth=2, heads=3, mlp_ratio=2).double().eval()
    with torch.no_grad():  # norms with non-trivial affine parameters, so the test sees them
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return model


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _embed(graph: UnitGraph):
    units = [u for u in graph.units if u.kind == "embed"]
    assert len(units) == 1
    return units[0]


class HandRMSNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.eps = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class EpsilonUnsaid(HandRMSNorm):
    def __init__(self, width: int):
        super().__init__(width)
        del self.eps


class GemmaRMSNorm(HandRMSNorm):
    """Named like an RMSNorm, but scales by 1 + weight (Gemma's)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


class Decoder(nn.Module):
    """Token ids -> logits: an embedding, pre-norm MLP blocks, a final norm and a head."""

    def __init__(self, norm=HandRMSNorm, vocab: int = 11, width: int = 10, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norms = nn.ModuleList(norm(width) for _ in range(depth))
        self.fcs = nn.ModuleList(nn.Sequential(nn.Linear(width, 14), nn.GELU(), nn.Linear(14, width))
                                 for _ in range(depth))
        self.norm = norm(width)
        self.lm_head = nn.Linear(width, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for norm, fc in zip(self.norms, self.fcs):
            x = x + fc(norm(x))
        return self.lm_head(self.norm(x))


def token_ids(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 11, (n, 6), generator=torch.Generator().manual_seed(2))


def _decoder(norm=HandRMSNorm) -> nn.Module:
    torch.manual_seed(1)
    return Decoder(norm).double().eval()


def _check_removal_is_the_gated_network(model, x, graph, unit, keep, *, rtol=1e-10, atol=1e-12):
    n = unit.channels
    scales = torch.linspace(0.7, 1.4, len(keep), dtype=torch.float64)
    gates = torch.zeros(n, dtype=torch.float64)
    gates[keep] = scales
    with torch.no_grad():
        dense = logits_of(model(x))
        with graph.gated(unit, gates):
            expected = logits_of(model(x))
        # candidates in one batch, candidate-major: the pruned network and the dense one
        with graph.gated(unit, torch.stack([gates, torch.ones(n, dtype=torch.float64)])):
            both = logits_of(model(torch.cat([x, x])))
    torch.testing.assert_close(both[:x.shape[0]], expected, rtol=rtol, atol=atol)
    torch.testing.assert_close(both[x.shape[0]:], dense, rtol=rtol, atol=atol)
    assert (expected - dense).abs().max() > 1e-3  # the gates change the function
    graph.prune(unit, torch.tensor(keep), scales)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(model(x)), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_kept_channel_norm_is_the_norm_of_the_kept_channels(kind):
    torch.manual_seed(0)
    norm = nn.LayerNorm(9, eps=1e-5) if kind == "layer" else nn.RMSNorm(9, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if kind == "layer":
            norm.bias.normal_()
    x = torch.randn(4, 3, 9) * 3 + 1
    keep = torch.tensor([0, 2, 3, 7])
    if kind == "layer":
        expected = F.layer_norm(x[..., keep], (4,), norm.weight[keep], norm.bias[keep], 1e-5)
    else:
        expected = x[..., keep] * torch.rsqrt(x[..., keep].pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight[keep]
    mask = torch.zeros(9)
    mask[keep] = 0.3  # any non-zero gate keeps its channel
    torch.testing.assert_close(kept_channel_norm(norm, x, mask)[..., keep], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept_channel_norm(norm, x, torch.ones(9)), norm(x), rtol=1e-5, atol=1e-6)
    both = kept_channel_norm(norm, torch.cat([x, x]), torch.stack([mask, torch.ones(9)]))
    torch.testing.assert_close(both[:4, ..., keep], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[4:], norm(x), rtol=1e-5, atol=1e-6)


def test_norms_the_stream_cannot_pass_through_are_named():
    assert "normalises over groups of channels" in norm_refusal("gn", nn.GroupNorm(2, 8))
    assert "normalises over 2 dims" in norm_refusal("ln", nn.LayerNorm((4, 8)))
    assert "computes something other than a LayerNorm or RMSNorm" in norm_refusal("g", GemmaRMSNorm(8))
    assert "has no attribute eps" in norm_refusal("e", EpsilonUnsaid(8))
    assert norm_refusal("ok", HandRMSNorm(8)) is None and norm_refusal("ok", nn.LayerNorm(8)) is None
    graph = UnitGraph(_decoder(GemmaRMSNorm), token_ids()[:2])
    assert not [u for u in graph.units if u.kind == "embed"]
    assert any("residual stream normalised by" in g.reason and "GemmaRMSNorm" in g.reason for g in graph.skipped)


def test_vit_embedding_width_is_a_unit_and_its_removal_is_the_gated_network():
    model, x = tiny_vit(), images()
    graph = UnitGraph(model, x[:2])
    unit = _embed(graph)
    assert (unit.producer, unit.channels) == ("patch_embed.proj", 12)
    assert unit.co_producers == [f"blocks.{i}.{p}" for i in range(2) for p in ("attn.proj", "mlp.fc2")]
    assert [r.name for r in unit.readers] == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv",
                                             "blocks.1.mlp.fc1", "head"]
    assert sorted(unit.norms) == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"]
    _check_removal_is_the_gated_network(model, x, graph, unit, [0, 3, 4, 8, 11])
    assert model.pos_embed.shape == (1, 5, 5) and model.cls_token.shape == (1, 1, 5)
    assert model.norm.normalized_shape == (5,) and model.blocks[0].attn.qkv.in_features == 5
    assert model.blocks[1].attn.num_heads == 3 and model.blocks[1].attn.qkv.out_features == 36  # heads untouched


def test_a_decoder_with_an_rms_norm_and_an_embedding_prunes_its_width_exactly():
    model, ids = _decoder(), token_ids()
    graph = UnitGraph(model, ids[:2])
    unit = _embed(graph)
    assert "embed" in unit.members and sorted(unit.norms) == ["norm", "norms.0", "norms.1"]
    _check_removal_is_the_gated_network(model, ids, graph, unit, [1, 2, 5, 9])
    assert model.embed.weight.shape == (11, 4) and model.norm.weight.shape == (4,)


def test_hugging_face_llama_and_vit_prune_their_hidden_size_exactly():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=20, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=3, head_dim=4,
                                      max_position_embeddings=16)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config).double().eval()
    ids = torch.randint(0, 40, (4, 7), generator=torch.Generator().manual_seed(0))
    graph = UnitGraph(llama, ids[:2])
    unit = _embed(graph)
    assert "model.embed_tokens" in unit.members and "model.norm" in unit.norms and len(unit.norms) == 5
    # Llama's RMSNorm computes in float32 whatever the model's dtype
    _check_removal_is_the_gated_network(llama, ids, graph, unit, list(range(0, 24, 2)), rtol=1e-5, atol=1e-6)
    assert llama.model.norm.weight.shape == (12,) and llama.lm_head.in_features == 12
    assert llama.model.layers[0].self_attn.q_proj.in_features == 12

    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                                    image_size=8, patch_size=4, num_channels=3, num_labels=5)
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(config).double().eval()
    x = images()
    graph = UnitGraph(vit, x[:2])
    unit = _embed(graph)
    assert len(unit.norms) == 5
    _check_removal_is_the_gated_network(vit, x, graph, unit, [0, 1, 5, 6, 10, 15])
    assert vit.vit.embeddings.cls_token.shape[-1] == 6 and vit.vit.embeddings.position_embeddings.shape[-1] == 6


@pytest.mark.parametrize("method,fold", [("refit", "reconstruct"), ("local", "consumer"), ("global", "consumer"),
                                         ("hybrid", "none"), ("magnitude", "reconstruct")])
def test_every_method_prunes_the_embedding_width(method, fold):
    model, x = tiny_vit(), images()
    reference = copy.deepcopy(model)
    results = prune_model(model, x, method=method, fold=fold, width_ratio=0.5, groups=("embed",), progress=False)
    assert [(r.unit, r.width) for r in results] == [("patch_embed.proj->blocks.0.attn.qkv+4", 6)]
    assert model.pos_embed.shape[-1] == 6 and all(b.norm1.normalized_shape == (6,) for b in model.blocks)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (6, 5) and torch.isfinite(out).all()
        if fold == "consumer":  # the gates kept: the reported discrepancy is the pruned model's
            measured = discrepancy(out.unsqueeze(0), reference(x), "kl")
            assert math.isclose(results[0].loss, float(measured), rel_tol=1e-6, abs_tol=1e-12)


def test_taylor_scores_over_the_embedding_width_equal_finite_differences():
    model, x = tiny_vit(), images()
    graph = UnitGraph(model, x[:2])
    unit = _embed(graph)
    ev = BatchSuffix(graph, unit, x)
    n = unit.channels
    a = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.2
    a /= a.sum()
    parts = ev.taylor_inputs(a * n)
    gr = sum(ops.taylor_scores(act, grad, a, 2).gr for act, grad in parts)
    assert_gr_is_the_directional_derivative(ev, a, gr, range(0, n, 3))


def test_a_width_pruned_zoo_vit_saves_and_loads(tmp_path):
    from greedyprune.models import build_model
    from greedyprune.models.io import load_model, save_model
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=10, in_channels=1, image_size=32).eval()
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    prune_model(model, x, method="local", width_ratio=0.3, fold="none", groups=("embed", "heads"), progress=False)
    assert model.pos_embed.shape == (1, 65, 58) and model.head.in_features == 58
    save_model(model, tmp_path / "pruned.pt")
    loaded, _ = load_model(tmp_path / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_load_pruned_resizes_a_fresh_model_and_names_the_first_layer_that_does_not_fit(tmp_path):
    from greedyprune.models import build_model, load_pruned
    from greedyprune.models.io import save_model
    from greedyprune.checks import ArgumentError
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=10, in_channels=1, image_size=32).eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    prune_model(model, x, method="local", width_ratio=0.5, progress=False)
    save_model(model, tmp_path / "pruned.pt")
    fresh = load_pruned(build_model("vit_tiny", num_classes=10, in_channels=1, image_size=32), tmp_path / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    assert [b.attn.num_heads for b in fresh.blocks] == [b.attn.num_heads for b in model.blocks]
    with pytest.raises(ArgumentError, match=r"'path'.*pruned.pt' does not fit CNN: missing: .*unexpected: "):
        load_pruned(build_model("cnn", num_classes=10, in_channels=1, image_size=8), tmp_path / "pruned.pt")
