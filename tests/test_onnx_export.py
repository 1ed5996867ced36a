"""export_onnx: a pruned model runs in ONNX Runtime at any batch size with PyTorch's outputs; a
missing `onnx` extra and an op without an ONNX translation are one error each, and a failed
export leaves no file behind."""
import os
import sys

import pytest
import torch

from greedyprune import greedy
from greedyprune.models import build_model, export_onnx


def _pruned(name: str, **build) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **build).eval()
    calib = torch.randn(16, build["in_channels"], build["image_size"], build["image_size"])
    greedy.prune_model(model, calib, method="magnitude", width_ratio=0.5, fold="none", progress=False)
    return model.eval()


@pytest.mark.parametrize("name, build", [
    ("cnn", dict(num_classes=10, in_channels=1, image_size=8)),
    ("vit_tiny", dict(num_classes=5, in_channels=3, image_size=16)),
])
def test_onnx_runtime_matches_pytorch_on_a_pruned_model_at_any_batch_size(name, build, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (the onnx extra)")
    model = _pruned(name, **build)
    dense = build_model(name, **build)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    shape = (build["in_channels"], build["image_size"], build["image_size"])
    export_onnx(model, torch.randn(1, *shape), tmp_path / "pruned.onnx")  # from one image, run at any batch
    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    for batch in (1, 4, 7):
        images = torch.randn(batch, *shape)
        (logits,) = session.run(None, {feed.name: images.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(images), rtol=1e-4, atol=1e-5)


def test_a_token_model_exports_with_a_dynamic_sequence_length(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (the onnx extra)")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.ReLU(), torch.nn.Linear(6, 11)).eval()
    export_onnx(model, torch.randint(0, 11, (1, 5)), tmp_path / "tokens.onnx")
    session = ort.InferenceSession(str(tmp_path / "tokens.onnx"), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    for shape in ((1, 5), (4, 9), (7, 2)):
        ids = torch.randint(0, 11, shape)
        (logits,) = session.run(None, {feed.name: ids.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_a_missing_onnx_package_names_the_extra(missing, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ModuleNotFoundError
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(ImportError, match=rf"ONNX export needs {missing}.*pip install 'greedyprune\[onnx\]'"):
        export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@torch.library.custom_op("greedyprune_test::mirror", mutates_args=())
def _mirror(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@_mirror.register_fake
def _(x):
    return torch.empty_like(x)


class _Mirrored(torch.nn.Module):
    def forward(self, x):
        return _mirror(x) + 1


def test_an_op_without_onnx_translation_is_named_and_no_file_is_left(tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript not installed (the onnx extra)")
    target = tmp_path / "pruned.onnx"
    target.write_bytes(b"the previous export")
    with pytest.raises(ValueError, match=r"'model'.*op greedyprune_test\.mirror\.default has no ONNX translation"):
        export_onnx(_Mirrored(), torch.randn(2, 3), target)
    assert target.read_bytes() == b"the previous export"  # the old file stands, no temp file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.onnx"]


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="onnxscript not installed (the onnx extra)")

    def disk_full(fd):  # the bytes are written, the flush to disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "pruned.onnx")
    assert list(tmp_path.iterdir()) == []


def test_prune_onnx_writes_pruned_onnx_that_runs_at_any_batch_size(tmp_path, monkeypatch, capsys):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (the onnx extra)")
    from greedyprune.cli import main
    from greedyprune.models import load_model

    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["prune", "--model", "cnn", "--method", "magnitude", "--width", "0.5", "--calib-samples", "32",
                 "--gram-samples", "64", "--train-epochs", "1", "--onnx", "--out", str(out), "--no-progress"]) == 0
    assert "pruned.onnx" in capsys.readouterr().out
    model, _ = load_model(out / "pruned.pt")
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    for batch in (1, 4, 7):
        images = torch.randn(batch, 1, 8, 8)
        (logits,) = session.run(None, {feed.name: images.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(images), rtol=1e-4, atol=1e-5)


def test_prune_onnx_without_the_extra_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from greedyprune.cli import main

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    out = tmp_path / "out"
    assert main(["prune", "--model", "cnn", "--onnx", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "greedyprune[onnx]" in err and len(err.splitlines()) == 1
    assert not out.exists()
