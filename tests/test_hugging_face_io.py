"""Hugging Face models in and out: dict batches of keyword inputs as calibration data
(greedy/keyword_batches.py) and pruned models saved with `save_pretrained`, their config stating
the pruned widths, loaded back with `from_pretrained` (models/hf.py). Models are built from a
config (random weights, no download); the tests skip without transformers."""
import copy

import pytest
import torch

from greedyprune.checks import ArgumentError
from greedyprune.greedy import prune_model

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
from greedyprune.models.hf import pruned_config, save_pretrained  # noqa: E402


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=20, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=3, head_dim=4,
                                      max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def tiny_vit():
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                                    image_size=8, patch_size=4, num_channels=3, num_labels=5)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).double().eval()


def token_ids(n: int = 8) -> torch.Tensor:
    return torch.randint(0, 40, (n, 7), generator=torch.Generator().manual_seed(0))


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["local", "global", "refit"])
def test_dict_batches_prune_as_their_tensors_do(method):
    ids = token_ids()
    plain = prune_model(tiny_llama(), ids.split(4), method=method, width_ratio=0.5, progress=False)
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids.split(4)]
    model = tiny_llama()
    keyed = prune_model(model, batches, method=method, width_ratio=0.5, progress=False)
    assert [(r.unit, r.kept) for r in keyed] == [(r.unit, r.kept) for r in plain]
    assert not model._forward_pre_hooks  # the unpacking hook is gone: the model takes keywords again
    assert model(input_ids=ids[:2]).logits.shape == (2, 7, 40)


def test_an_attention_mask_reaches_the_model():
    ids = token_ids()
    mask = torch.ones_like(ids)
    mask[:, :3] = 0
    open_all = prune_model(tiny_llama(), [{"input_ids": ids}], method="local", width_ratio=0.5, progress=False)
    masked = prune_model(tiny_llama(), [{"input_ids": ids, "attention_mask": mask, "labels": ids}], method="local",
                         width_ratio=0.5, progress=False)
    assert [r.kept for r in masked] != [r.kept for r in open_all]


def test_a_pixel_values_batch_prunes_a_vit():
    x = images()
    plain = prune_model(tiny_vit(), x, method="local", width_ratio=0.5, progress=False)
    keyed = prune_model(tiny_vit(), {"pixel_values": x}, method="local", width_ratio=0.5, progress=False)
    assert [r.kept for r in keyed] == [r.kept for r in plain]


def test_dict_batches_that_cannot_be_packed_are_one_error_naming_the_keys():
    ids = token_ids()
    with pytest.raises(ArgumentError, match=r"'calib'.*'input_ids' is \(8, 7\).*'attention_mask' is \(8, 6\)"):
        prune_model(tiny_llama(), [{"input_ids": ids, "attention_mask": ids[:, 1:]}], method="local",
                    width_ratio=0.5, progress=False)
    with pytest.raises(ArgumentError, match=r"'calib'.*must all have the keys \['input_ids'\]"):
        prune_model(tiny_llama(), [{"input_ids": ids}, {"input_ids": ids, "attention_mask": ids}], method="local",
                    width_ratio=0.5, progress=False)


@pytest.mark.parametrize("make, inputs", [(tiny_llama, token_ids), (tiny_vit, images)], ids=["llama", "vit"])
def test_a_pruned_model_saves_with_its_widths_and_loads_with_from_pretrained(make, inputs, tmp_path):
    model, x = make(), inputs()
    prune_model(model, x, method="refit", fold="reconstruct", width_ratio=0.5, progress=False)
    save_pretrained(model, tmp_path / "pruned")
    loaded = type(model).from_pretrained(tmp_path / "pruned", dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)
    config = loaded.config
    if make is tiny_llama:
        assert (config.hidden_size, config.intermediate_size, config.num_attention_heads,
                config.num_key_value_heads, config.head_dim) == (12, 10, 4, 2, 4)
    else:
        assert (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.head_dim) == (8, 12, 2, 4)
    with pytest.raises(ArgumentError, match="exists; pass overwrite=True"):
        save_pretrained(model, tmp_path / "pruned")
    save_pretrained(model, tmp_path / "pruned", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_widths_that_differ_between_layers_are_refused_with_the_remedy():
    model = tiny_llama()
    prune_model(model, token_ids(), method="local", width_ratio=0.5, progress=False,
                units=["model.layers.0.mlp.gate_proj->model.layers.0.mlp.down_proj"])
    before = copy.deepcopy(model.config)
    with pytest.raises(ArgumentError, match=r"different MLP widths \(model.layers.0.mlp: 10, model.layers.1.mlp: 20\)"
                                            r".*prune with a width ratio alone"):
        pruned_config(model)
    assert model.config.to_dict() == before.to_dict()
