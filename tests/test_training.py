"""greedyprune.harness.training (train, finetune, evaluate) and the cache of trained models
(model_source.pretrained) on the bundled digits with tiny models, and greedyprune.harness.measure."""
import math

import pytest
import torch
from torch import nn

from greedyprune.harness import data, measure, model_source, training


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: extra threads only wait on each other, slowly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_loaders():
    train_set, test_set = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    return (data.make_loader(train_set, 64, shuffle=True, seed=0),
            data.make_loader(test_set, 128, shuffle=False))


def _linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Float64Probe(nn.Module):
    """A linear model in float64, so weight changes reveal the learning rate precisely."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 10, dtype=torch.float64)

    def forward(self, x):
        return self.linear(x.flatten(1).double()).float()


def test_train_reaches_high_accuracy_and_loss_decreases(digits_loaders):
    train_loader, test_loader = digits_loaders
    model = _mlp()
    losses = training.train(model, train_loader, epochs=4, lr=0.1, progress=False)
    assert len(losses) == 4 and losses[-1] < losses[0]
    result = training.evaluate(model, test_loader)
    assert result["samples"] == 360 and result["accuracy"] > 0.9
    assert 0 < result["loss"] < losses[0]


def test_bf16_autocast_and_channels_last_train_a_cnn(digits_loaders):
    """precision='bf16' (autocast) and channels_last run on the CPU too: the conv really computes in
    bfloat16 on NHWC tensors, the CNN learns, and its weights end float32 and contiguous."""
    train_loader, test_loader = digits_loaders
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    seen = []
    model[0].register_forward_hook(
        lambda m, i, out: seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last))))
    losses = training.train(model, train_loader, epochs=2, lr=0.05, precision="bf16", channels_last=True,
                            progress=False)
    assert seen[0] == (torch.bfloat16, True)
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert training.evaluate(model, test_loader)["accuracy"] > 0.8


def test_cosine_schedule_per_step_and_after_step_once_per_step(digits_loaders):
    train_loader, _ = digits_loaders
    model, lr, epochs = Float64Probe(), 0.05, 2
    weight = model.linear.weight
    previous = weight.detach().clone()
    seen_steps, seen_lrs = [], []

    def after_step(stepped_model, step):
        # plain SGD: w_new = w_old - lr * grad, so lr = (w_old - w_new).grad / |grad|^2
        nonlocal previous
        assert stepped_model is model
        grad = weight.grad
        seen_lrs.append(((previous - weight.detach()) * grad).sum().item() / (grad * grad).sum().item())
        seen_steps.append(step)
        previous = weight.detach().clone()

    training.train(model, train_loader, epochs=epochs, lr=lr, momentum=0.0, weight_decay=0.0,
                   after_step=after_step, progress=False)
    total = epochs * len(train_loader)
    assert seen_steps == list(range(total))
    expected = [lr * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    assert seen_lrs == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert seen_lrs[0] == pytest.approx(lr) and seen_lrs[-1] < 0.01 * lr


def test_params_restricts_what_changes(digits_loaders):
    train_loader, _ = digits_loaders
    model = _mlp()
    first, last = model[1], model[3]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    training.train(model, train_loader, epochs=1, lr=0.1, params=last.parameters(), progress=False)
    assert torch.equal(first.weight, before["1.weight"]) and torch.equal(first.bias, before["1.bias"])
    assert not torch.equal(last.weight, before["3.weight"])


def test_train_and_evaluate_restore_the_mode(digits_loaders):
    train_loader, test_loader = digits_loaders
    model = _linear_model()
    modes = []
    for start_training in (True, False):
        model.train(start_training)
        training.evaluate(model, test_loader)
        modes.append(model.training)
        training.train(model, train_loader, epochs=1, lr=0.01,  # with the progress bar
                       after_step=lambda m, step: modes.append(m.training) if step == 0 else None)
        modes.append(model.training)
    assert modes == [True, True, True, False, True, False]


def test_non_finite_loss_stops_before_the_step(digits_loaders):
    train_loader, _ = digits_loaders

    class NaNHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.flatten(1)) * math.nan

    model = NaNHead()
    before = model.linear.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="'lr'"):
        training.train(model, train_loader, epochs=1, lr=0.1, progress=False)
    assert torch.equal(model.linear.weight, before)


@pytest.mark.parametrize("kwargs, name, error", [
    (dict(epochs=0), "epochs", ValueError),
    (dict(epochs=1.5), "epochs", TypeError),
    (dict(lr=0.0), "lr", ValueError),
    (dict(lr=-0.1), "lr", ValueError),
    (dict(lr=math.nan), "lr", ValueError),
    (dict(momentum=1.0), "momentum", ValueError),
    (dict(weight_decay=-1e-4), "weight_decay", ValueError),
    (dict(label_smoothing=1.0), "label_smoothing", ValueError),
    (dict(momentum=0.0, nesterov=True), "nesterov", ValueError),
    (dict(params=[]), "params", ValueError),
    (dict(params=[torch.zeros(3)]), "params", ValueError),
    (dict(after_step=3), "after_step", TypeError),
    (dict(precision="fp16"), "precision", ValueError),
])
def test_train_bad_arguments_name_the_argument(digits_loaders, kwargs, name, error):
    train_loader, _ = digits_loaders
    with pytest.raises(error, match=f"'{name}'"):
        training.train(_linear_model(), train_loader, **({"epochs": 1, "lr": 0.1} | kwargs))


def test_bad_model_or_loader_names_the_argument(digits_loaders):
    _, test_loader = digits_loaders
    with pytest.raises(TypeError, match="'model'"):
        training.evaluate(lambda x: x, test_loader)
    with pytest.raises(ValueError, match="'loader'"):
        training.evaluate(_linear_model(), [])
    with pytest.raises(TypeError, match="'loader'"):
        training.train(_linear_model(), (batch for batch in test_loader), epochs=1, lr=0.1)


def test_pretrained_trains_once_then_loads_from_cache(tmp_path, digits_loaders):
    train_loader, test_loader = digits_loaders
    fits = []

    def fit(model):
        fits.append(model)
        training.train(model, train_loader, epochs=1, lr=0.1, progress=False)

    first = model_source.pretrained("digits-linear_v1.0", _linear_model, fit, cache_dir=tmp_path)
    second = model_source.pretrained("digits-linear_v1.0", lambda: _linear_model(seed=1), fit, cache_dir=tmp_path)
    assert len(fits) == 1 and fits[0] is first and second is not first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-linear_v1.0.pt"]  # no temp file left
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretrained_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    model_source.pretrained("tiny", _linear_model, lambda model: None)
    assert (tmp_path / "cache" / "tiny.pt").is_file()


def test_pretrained_failed_fit_saves_nothing(tmp_path):
    def fit(model):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model_source.pretrained("tiny", _linear_model, fit, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pretrained_mismatched_cache_gives_clear_error(tmp_path):
    model_source.pretrained("model", _linear_model, lambda model: None, cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="delete the file"):
        model_source.pretrained("model", _mlp, lambda model: None, cache_dir=tmp_path)


@pytest.mark.parametrize("name_key", ["", "../escape", "a/b", ".hidden", "x" * 201, "bad name", 3])
def test_pretrained_rejects_unsafe_name_key(tmp_path, name_key):
    with pytest.raises(ValueError, match="'name_key'"):
        model_source.pretrained(name_key, _linear_model, lambda model: None, cache_dir=tmp_path)


def test_count_params_and_flops():
    linear = nn.Linear(64, 10)
    assert measure.count_params(linear) == 64 * 10 + 10
    assert measure.count_flops(linear, torch.randn(1, 64)) == 2 * 64 * 10
    shared = nn.Sequential(linear, nn.ReLU(), nn.Linear(10, 64), nn.ReLU(), linear)
    assert measure.count_params(shared) == 650 + 10 * 64 + 64  # the shared layer counted once
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert measure.count_flops(conv, (torch.randn(2, 3, 16, 16),)) == 2 * 2 * 8 * 16 * 16 * 3 * 9


def test_measure_latency_and_mode():
    model = _mlp().train()
    result = measure.measure_latency(model, torch.randn(8, 1, 8, 8), warmup=2, repeats=10)
    assert set(result) == {"median_ms", "p10_ms", "p90_ms", "repeats", "threads", "load"} and result["repeats"] == 10
    assert result["threads"] == torch.get_num_threads() and len(result["load"]) == 2
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert model.training
    measure.count_flops(model, torch.randn(1, 64))
    assert model.training


@pytest.mark.parametrize("call, name", [
    (lambda: measure.measure_latency(nn.Linear(2, 2), torch.randn(1, 2), repeats=0), "repeats"),
    (lambda: measure.measure_latency(nn.Linear(2, 2), torch.randn(1, 2), warmup=-1), "warmup"),
    (lambda: measure.count_flops(nn.Linear(2, 2), [1.0, 2.0]), "example_input"),
    (lambda: measure.count_flops(nn.Linear(2, 2), ()), "example_input"),
    (lambda: measure.count_params("model"), "model"),
])
def test_measure_bad_arguments_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=f"'{name}'"):
        call()
