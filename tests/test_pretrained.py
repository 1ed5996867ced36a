"""--pretrained: a torchvision / timm model's published weights from the local torch hub / Hugging
Face cache (never the network), one line naming the exact path where the file is missing, and the
preprocessing from the weights' own config with flags over it.

torchvision and timm are not installed on CI: their lookups are replaced by stand-ins that
answer as they do (a weights enum's url and transforms(), a pretrained config), while the cache
folders, the files and the loading are real. With the library installed, its own test runs too."""
import argparse
import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from greedyprune.cli import main
from greedyprune.harness import commands, model_source
from greedyprune.harness.data import ImageTransform
from greedyprune.models import ResNet

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
TIMM_HUB_ID = "timm/resnet18.a1_in1k"


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec reads it
    vars(module).update(attributes)
    return module


@pytest.fixture
def torchvision_stand_in(monkeypatch):
    """torchvision.models as far as --pretrained asks it: resnet18's weights enum and builder."""
    preset = types.SimpleNamespace(crop_size=[224], resize_size=[232], interpolation=types.SimpleNamespace(
        value="bilinear"), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    weights = types.SimpleNamespace(url=RESNET18_URL, transforms=lambda: preset)

    def get_model_weights(name):
        if name != "resnet18":
            raise ValueError(f"Unknown model {name}")
        return types.SimpleNamespace(DEFAULT=weights)

    models = _module("torchvision.models", get_model_weights=get_model_weights,
                     get_model=lambda name, num_classes: ResNet(name, num_classes, 3))  # the zoo's: torchvision's keys
    monkeypatch.setitem(sys.modules, "torchvision", _module("torchvision", models=models))
    monkeypatch.setitem(sys.modules, "torchvision.models", models)


@pytest.fixture
def timm_stand_in(monkeypatch):
    config = types.SimpleNamespace(hf_hub_id=TIMM_HUB_ID, url=None, input_size=(3, 288, 288), crop_pct=0.95,
                                   interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    timm_models = _module("timm.models", get_pretrained_cfg=lambda name: config if name == "resnet18.a1_in1k" else None)
    monkeypatch.setitem(sys.modules, "timm", _module("timm", models=timm_models,
                                                    create_model=lambda name, num_classes, in_chans: ResNet(
                                                        "resnet18", num_classes, in_chans)))
    monkeypatch.setitem(sys.modules, "timm.models", timm_models)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants", reason="huggingface_hub not installed")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf" / f"models--{TIMM_HUB_ID.replace('/', '--')}" / "snapshots" / "main"


@pytest.fixture
def cifar(tmp_path):
    """A CIFAR-10 python-pickle folder in the real format with a few random images."""
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 8)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, f)
    return str(folder)


def _fresh_resnet18_weights(num_classes=10) -> dict:
    torch.manual_seed(1)
    return ResNet("resnet18", num_classes, 3).state_dict()


def test_torchvision_weights_come_from_the_torch_hub_cache(torchvision_stand_in, hub, cifar, capsys):
    hub.mkdir(parents=True)
    saved = _fresh_resnet18_weights()
    torch.save(saved, hub / "resnet18-f37072fd.pth")
    path = model_source.published_weights_file("torchvision:resnet18")
    assert path == hub / "resnet18-f37072fd.pth"
    model = model_source.resolve_model("torchvision:resnet18", cifar, without_weights="refuse", weights=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert main(["eval", "torchvision:resnet18", "--pretrained", "--data", cifar, "--device", "cpu"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_missing_torchvision_weights_are_one_line_naming_the_exact_path(torchvision_stand_in, hub, cifar, capsys):
    assert main(["eval", "torchvision:resnet18", "--pretrained", "--data", cifar]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'--pretrained'" in err
    assert err.endswith(f"put the file at {hub / 'resnet18-f37072fd.pth'}")
    out = Path(cifar).parent / "out"
    assert main(["prune", "--model", "torchvision:resnet18", "--pretrained", "--data", cifar, "--out", str(out),
                 "--no-progress"]) == 2
    assert str(hub / "resnet18-f37072fd.pth") in capsys.readouterr().err and not out.exists()


def test_timm_weights_come_from_the_hugging_face_cache(timm_stand_in, hf_cache, cifar):
    save_file = pytest.importorskip("safetensors.torch", reason="safetensors not installed").save_file
    with pytest.raises(ValueError, match=rf"'--pretrained'.*put the file at {hf_cache / 'model.safetensors'} "
                                         rf"\(or {hf_cache / 'pytorch_model.bin'}\)"):
        model_source.published_weights_file("timm:resnet18.a1_in1k")
    hf_cache.mkdir(parents=True)
    saved = _fresh_resnet18_weights()
    save_file(saved, hf_cache / "model.safetensors")
    path = model_source.published_weights_file("timm:resnet18.a1_in1k")
    assert path == hf_cache / "model.safetensors"
    model = model_source.resolve_model("timm:resnet18.a1_in1k", cifar, without_weights="refuse", weights=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_bad_pretrained_requests_name_the_flag(timm_stand_in, capsys):
    for argv, says in [(["eval", "cnn", "--pretrained"], "goes with a torchvision:<name> or timm:<name>"),
                       (["eval", "timm:resnet18.a1_in1k", "--pretrained", "--weights", "w.pt"], "cannot be given"),
                       (["eval", "timm:no_such_net", "--pretrained"], "timm publishes no weights for 'no_such_net'")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "'--pretrained'" in err and says in err and len(err.splitlines()) == 1


def test_a_broken_cached_safetensors_file_is_one_line(timm_stand_in, hf_cache, capsys):
    pytest.importorskip("safetensors.torch", reason="safetensors not installed")
    hf_cache.mkdir(parents=True)
    (hf_cache / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    assert main(["eval", "timm:resnet18.a1_in1k", "--pretrained"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable safetensors file" in err and len(err.splitlines()) == 1


def _transform_flags(model, data, **flags):
    given = {**dict(image_size=None, resize=None, interpolation=None, mean=None, std=None), **flags}
    return argparse.Namespace(model=model, data=data, pretrained=True, **given)


@pytest.fixture
def image_folder(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split / "a").mkdir(parents=True)
    return str(tmp_path / "images")


def test_preprocessing_follows_the_weights_config_with_flags_over_it(torchvision_stand_in, timm_stand_in,
                                                                     image_folder, cifar):
    assert commands.image_transform(_transform_flags("torchvision:resnet18", image_folder)) == ImageTransform(
        crop=224, resize=232, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    # timm: resize = floor(crop / crop_pct), as timm's eval transform
    assert commands.image_transform(_transform_flags("timm:resnet18.a1_in1k", image_folder)) == ImageTransform(
        crop=288, resize=303, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    overridden = commands.image_transform(_transform_flags("torchvision:resnet18", image_folder, image_size=288,
                                                           interpolation="bicubic", mean=[0.5, 0.5, 0.5]))
    assert overridden == ImageTransform(crop=288, resize=298, interpolation="bicubic", mean=(0.5, 0.5, 0.5),
                                        std=(0.229, 0.224, 0.225))  # the resize keeps its ratio 232 / 224
    assert commands.image_transform(_transform_flags("torchvision:resnet18", cifar)) is None  # used as stored
    with pytest.raises(ValueError, match="'--image-size' applies to ImageFolder data only"):
        commands.image_transform(_transform_flags("torchvision:resnet18", cifar, image_size=288))
    with pytest.raises(ValueError, match="'std' must be > 0"):
        commands.image_transform(_transform_flags("torchvision:resnet18", image_folder, std=[0.2, 0.0, 0.2]))


def test_real_torchvision_weights_file_name_and_transforms(hub):
    models = pytest.importorskip("torchvision.models", reason="torchvision not installed")
    weights = models.get_model_weights("resnet50").DEFAULT
    with pytest.raises(ValueError, match=rf"put the file at {hub / Path(weights.url).name}"):
        model_source.published_weights_file("torchvision:resnet50")
    preset = weights.transforms()
    assert model_source.published_transform("torchvision:resnet50") == ImageTransform(
        crop=preset.crop_size[0], resize=preset.resize_size[0], interpolation=preset.interpolation.value,
        mean=tuple(preset.mean), std=tuple(preset.std))


def test_real_timm_weights_load_from_a_fake_hugging_face_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm", reason="timm not installed")
    save_file = pytest.importorskip("safetensors.torch", reason="safetensors not installed").save_file
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    config = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    folder = tmp_path / "hf" / f"models--{config.hf_hub_id.replace('/', '--')}" / "snapshots" / "main"
    folder.mkdir(parents=True)
    save_file(timm.create_model("resnet18.a1_in1k", num_classes=10).state_dict(), folder / "model.safetensors")
    assert model_source.published_weights_file("timm:resnet18.a1_in1k") == folder / "model.safetensors"
