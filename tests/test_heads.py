"""Attention heads as units (surgery.py kind "heads", heads.py): discovery on greedyprune's ViT and
on Hugging Face Llama (grouped-query attention) and ViT models, exact removal of whole heads, the
Gram of head contributions, Taylor scores over heads, the refit, magnitude and every method."""
import copy

import pytest
import torch
import torch.nn as nn

from greedyprune import ops
from greedyprune.greedy import prune_model
from greedyprune.greedy.gram import contribution_gram
from greedyprune.models.heads import group_l1
from greedyprune.greedy.suffix import BatchSuffix
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.models.vit import ViT
from finite_differences import assert_gr_is_the_directional_derivative


def tiny_vit(heads: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return ViT(num_classes=5, in_channels=3, image_size=8, width=12, depth=2, heads=heads, mlp_ratio=2).double().eval()


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def tiny_llama(transformers):
    """Grouped-query attention: 6 query heads in 3 key/value groups of 2, head_dim 4."""
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=20, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=3, head_dim=4,
                                      max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def token_ids(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 40, (n, 7), generator=torch.Generator().manual_seed(0))


def _heads(graph: UnitGraph):
    return [u for u in graph.units if u.kind == "heads"]


def _logits(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def test_vit_heads_are_units_and_nothing_feeding_attention_is_left_out():
    graph = UnitGraph(tiny_vit(), images()[:2])
    assert [(u.kind, u.name, u.channels) for u in graph.units] == [
        ("embed", "patch_embed.proj->blocks.0.attn.qkv+4", 12), ("heads", "blocks.0.attn.qkv->blocks.0.attn.proj", 3), ("inner", "blocks.0.mlp.fc1->blocks.0.mlp.fc2", 24),
        ("heads", "blocks.1.attn.qkv->blocks.1.attn.proj", 3), ("inner", "blocks.1.mlp.fc1->blocks.1.mlp.fc2", 24)]
    unit = _heads(graph)[0]
    assert unit.readers[0].columns_per_channel == 4 and unit.readers[0].channel_last and unit.fold_target is None
    assert not any("attention" in g.reason for g in graph.skipped)


def test_a_single_head_or_a_norm_over_heads_is_left_whole_with_the_reason():
    graph = UnitGraph(tiny_vit(heads=1), images()[:2])
    assert not _heads(graph)
    assert {g.reason for g in graph.skipped if g.producers == ["blocks.0.attn.qkv"]} == {
        "attention blocks.0.attn has one key/value group"}
    model = tiny_vit()
    model.blocks[1].attn.norm = nn.LayerNorm(12)  # timm's scale_norm: over every head's output
    graph = UnitGraph(model, images()[:2])
    assert [u.name for u in _heads(graph)] == ["blocks.0.attn.qkv->blocks.0.attn.proj"]
    assert any(g.producers == ["blocks.1.attn.qkv"] and "norm (LayerNorm) normalises over all heads" in g.reason
               for g in graph.skipped)


def _check_removal_is_the_gated_network(model, x, unit, graph):
    n = unit.channels
    keep = torch.tensor([0, n - 1])
    scales = torch.tensor([1.3, 0.6], dtype=torch.float64)
    gates = torch.zeros(n, dtype=torch.float64)
    gates[keep] = scales
    with torch.no_grad(), graph.gated(unit, gates):
        expected = _logits(model, x)
    graph.prune(unit, keep, scales)
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, x), expected, rtol=1e-10, atol=1e-12)


def test_removing_vit_heads_computes_the_gated_network():
    model, x = tiny_vit(), images()
    graph = UnitGraph(model, x[:2])
    _check_removal_is_the_gated_network(model, x, _heads(graph)[1], graph)
    attn = model.blocks[1].attn
    assert attn.num_heads == 2 and attn.qkv.out_features == 24 and attn.proj.in_features == 8
    assert attn.qkv.bias.shape == (24,)


def test_removing_grouped_query_heads_computes_the_gated_network():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    model, ids = tiny_llama(transformers), token_ids()
    graph = UnitGraph(model, ids[:2])
    heads = _heads(graph)
    assert [(u.name, u.channels, u.readers[0].columns_per_channel, u.co_producers) for u in heads] == [
        (f"model.layers.{i}.self_attn.q_proj->model.layers.{i}.self_attn.o_proj", 3, 8,
         [f"model.layers.{i}.self_attn.k_proj", f"model.layers.{i}.self_attn.v_proj"]) for i in range(2)]
    _check_removal_is_the_gated_network(model, ids, heads[0], graph)
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features, attn.o_proj.in_features) \
        == (16, 8, 8, 16)


def test_hugging_face_vit_heads_prune():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                                    image_size=8, patch_size=4, num_channels=3, num_labels=5)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).double().eval()
    fresh = copy.deepcopy(model)
    x = images()
    graph = UnitGraph(model, x[:2])
    heads = _heads(graph)
    assert [(u.producer, u.channels) for u in heads] == [(f"vit.layers.{i}.attention.q_proj", 4) for i in range(2)]
    _check_removal_is_the_gated_network(model, x, heads[1], graph)
    model = fresh
    results = prune_model(model, x, method="local", width_ratio=0.5, progress=False)
    assert [r.width for r in results] == [8, 2, 12, 2, 12]
    assert all(layer.attention.num_attention_heads == 2 for layer in model.vit.layers)
    assert model(x).logits.shape == (6, 5)


def test_head_gram_is_the_gram_of_the_heads_output_blocks():
    model, x = tiny_vit(), images()
    graph = UnitGraph(model, x[:2])
    unit = _heads(graph)[0]
    proj = graph.module(unit.consumer)
    seen = {}
    handle = proj.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].detach()))
    model(x)
    handle.remove()
    h = seen["x"].reshape(-1, 3, 4)  # rows = images x tokens, [heads, head_dim]
    w = proj.weight.detach().view(proj.out_features, 3, 4)
    sigma = 3 * torch.einsum("rhd,ohd->hro", h, w)  # each head's output, N times
    expected = torch.einsum("hro,kro->hk", sigma, sigma) / h.shape[0]
    torch.testing.assert_close(contribution_gram(graph, unit, x.split(4)), expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("use_fx", [True, False])
def test_taylor_scores_over_heads_equal_finite_differences(use_fx):
    model, x = tiny_vit(), images()
    graph = UnitGraph(model, x[:2])
    unit = _heads(graph)[1]
    ev = BatchSuffix(graph, unit, x, use_fx=use_fx)
    n = unit.channels
    a = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    (act, grad), = ev.taylor_inputs(a * n)
    assert act.shape == (6, 3, 5 * 4)  # [images, heads, (4 patches + cls) x head_dim]
    gr = ops.taylor_scores(act, grad, a, 2).gr
    assert_gr_is_the_directional_derivative(ev, a, gr)


def test_head_magnitude_is_the_mean_l1_of_the_heads_rows_and_columns():
    model = tiny_vit()
    graph = UnitGraph(model, images()[:2])
    unit = _heads(graph)[0]
    qkv, proj = model.blocks[0].attn.qkv.weight.detach(), model.blocks[0].attn.proj.weight.detach()
    expected = torch.stack([(qkv.view(3, 3, 4, 12)[:, h].abs().sum() + proj[:, 4 * h:4 * h + 4].abs().sum()) / 2
                            for h in range(3)])
    torch.testing.assert_close(group_l1(model, unit.heads), expected)
    torch.testing.assert_close(graph.magnitude(unit), expected)


def test_reconstruct_refits_the_output_projection_on_the_kept_heads():
    model, x = tiny_vit(), images(12)
    reference = copy.deepcopy(model)
    graph = UnitGraph(model, x[:2])
    unit = _heads(graph)[0]
    seen = {}
    handle = reference.blocks[0].attn.proj.register_forward_hook(
        lambda _m, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    reference(x)
    handle.remove()
    results = prune_model(model, x, method="local", width_ratio=0.5, fold="reconstruct", units=[unit.name],
                          graph=graph, progress=False)
    kept = torch.tensor(results[0].kept)
    columns = (kept[:, None] * 4 + torch.arange(4)).flatten()
    X = seen["x"].reshape(-1, 12)[:, columns]
    Y = seen["y"].reshape(-1, 12)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)  # with a bias: the centred ridge regression
    xx = Xc.T @ Xc / len(X)
    lam = 0.01 * float(xx.diagonal().mean())
    weight = torch.linalg.solve(xx + lam * torch.eye(len(xx), dtype=X.dtype), Xc.T @ Yc / len(X)).T
    solved = torch.cat([weight, (Y.mean(0) - weight @ X.mean(0))[:, None]], 1)
    proj = model.blocks[0].attn.proj
    assert results[0].fold == "reconstruct" and proj.in_features == 8
    torch.testing.assert_close(torch.cat([proj.weight, proj.bias[:, None]], 1), solved, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method,fold", [("refit", "reconstruct"), ("local", "none"), ("global", "consumer"),
                                         ("hybrid", "none"), ("magnitude", "reconstruct")])
def test_every_method_prunes_heads(method, fold):
    model, x = tiny_vit(), images()
    results = prune_model(model, x, method=method, fold=fold, width_ratio=0.5, groups=("heads",), progress=False)
    assert [(r.unit, r.width) for r in results] == [("blocks.0.attn.qkv->blocks.0.attn.proj", 2),
                                                   ("blocks.1.attn.qkv->blocks.1.attn.proj", 2)]
    assert all(b.attn.num_heads == 2 and b.attn.qkv.out_features == 24 and b.mlp.fc1.out_features == 24
               for b in model.blocks)
    assert model(x).shape == (6, 5) and torch.isfinite(model(x)).all()


def test_llama_prunes_key_value_groups_end_to_end():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    model, ids = tiny_llama(transformers), token_ids()
    results = prune_model(model, ids, method="refit", width_ratio=0.5, fold="reconstruct", progress=False)
    assert [r.width for r in results] == [12, 2, 10, 2, 10]
    for layer in model.model.layers:
        attn = layer.self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (16, 8, 16)
    assert torch.isfinite(model(ids).logits).all()


def test_a_head_pruned_zoo_vit_saves_and_loads_with_its_head_counts(tmp_path):
    from greedyprune.models import build_model
    from greedyprune.models.io import load_model, save_model
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=10, in_channels=1, image_size=32).eval()
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    prune_model(model, x, method="local", width_ratio=0.3, fold="none", groups=("heads",), units=[
        "blocks.0.attn.qkv->blocks.0.attn.proj", "blocks.5.attn.qkv->blocks.5.attn.proj"], progress=False)
    assert [b.attn.num_heads for b in model.blocks[:6]] == [1, 3, 3, 3, 3, 1]
    save_model(model, tmp_path / "pruned.pt")
    loaded, _ = load_model(tmp_path / "pruned.pt")
    assert [b.attn.num_heads for b in loaded.blocks[:6]] == [1, 3, 3, 3, 3, 1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
