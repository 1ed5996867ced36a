"""greedyprune.harness.data: bundled digits, CIFAR-10 pickle folders (a synthetic one here),
ImageFolder's torchvision requirement, seeded loaders."""
import importlib.util
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from greedyprune.harness import data

CIFAR_TRAIN_PER_BATCH = 4
CIFAR_TEST_SIZE = 6


def _digits_xy(split):
    dataset = data.load_dataset("digits", split)
    return dataset.tensors


def test_digits_shapes_dtypes_and_standardization():
    x_train, y_train = _digits_xy("train")
    x_test, y_test = _digits_xy("test")
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.dtype == y_test.dtype == torch.int64
    assert set(y_train.tolist()) == set(range(10))
    # standardized with the train split's own statistics
    assert abs(x_train.mean().item()) < 1e-4 and abs(x_train.std().item() - 1) < 1e-3
    x, y = data.load_dataset("digits", "val")[0]  # "val" is the test split
    assert torch.equal(x, x_test[0]) and y == y_test[0]
    assert data.dataset_info("digits") == dict(in_channels=1, image_size=8, num_classes=10)


def test_digits_split_is_stratified_disjoint_and_deterministic():
    x_train, y_train = _digits_xy("train")
    x_test, y_test = _digits_xy("test")
    train_share = torch.bincount(y_train, minlength=10) / len(y_train)
    test_share = torch.bincount(y_test, minlength=10) / len(y_test)
    assert torch.allclose(train_share, test_share, atol=0.005)
    train_rows = {row.numpy().tobytes() for row in x_train}
    assert not any(row.numpy().tobytes() in train_rows for row in x_test)  # no digits image repeats
    data._digits_arrays.cache_clear()  # rebuild from scratch: same split, same values
    x_again, y_again = _digits_xy("train")
    assert torch.equal(x_again, x_train) and torch.equal(y_again, y_train)


def _write_cifar_folder(folder, rng):
    """A CIFAR-10 python-pickle folder in the real file format, with few random images."""
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": CIFAR_TRAIN_PER_BATCH for i in range(1, 6)} | {"test_batch": CIFAR_TEST_SIZE}
    written = {}
    for name, n in batches.items():
        images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": images}, f)
        written[name] = (images, labels)
    return written


@pytest.fixture
def cifar(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    return folder, _write_cifar_folder(folder, np.random.default_rng(0))


def _normalized(rows):
    images = torch.from_numpy(rows).view(-1, 3, 32, 32).float() / 255
    return (images - torch.tensor(data.CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(data.CIFAR10_STD).view(3, 1, 1)


def test_cifar_test_split_is_normalized_and_not_augmented(cifar):
    folder, written = cifar
    images, labels = written["test_batch"]
    dataset = data.load_dataset(str(folder), "test")
    assert len(dataset) == CIFAR_TEST_SIZE
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    assert torch.allclose(torch.stack(xs), _normalized(images), atol=1e-6)
    assert [int(y) for y in ys] == labels and ys[0].dtype == torch.int64
    # the parent of cifar-10-batches-py works too
    again = data.load_dataset(str(folder.parent), "test")
    assert torch.equal(again[2][0], dataset[2][0])
    assert data.dataset_info(str(folder)) == dict(in_channels=3, image_size=32, num_classes=10)


def test_cifar_train_augmentation_is_a_padded_crop_or_flip_and_seeded(cifar):
    folder, written = cifar
    dataset = data.load_dataset(str(folder), "train")
    assert len(dataset) == 5 * CIFAR_TRAIN_PER_BATCH
    dataset.reseed(7)
    first = torch.stack([dataset[i][0] for i in range(len(dataset))])
    dataset.reseed(7)
    again = torch.stack([dataset[i][0] for i in range(len(dataset))])
    dataset.reseed(8)
    other = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert first.shape == (20, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)

    # each augmented image is one of the 9x9 crops of the zero-padded image, maybe flipped
    images, _ = written["data_batch_1"]
    raw = torch.from_numpy(images[:1]).view(1, 3, 32, 32).float() / 255
    padded = F.pad(raw, (4, 4, 4, 4))
    mean, std = torch.tensor(data.CIFAR10_MEAN).view(3, 1, 1), torch.tensor(data.CIFAR10_STD).view(3, 1, 1)
    crops = padded.unfold(2, 32, 1).unfold(3, 32, 1)[0].permute(1, 2, 0, 3, 4).reshape(81, 3, 32, 32)
    candidates = (torch.cat([crops, crops.flip(-1)]) - mean) / std
    assert ((candidates - first[0]).abs().amax(dim=(1, 2, 3)) < 1e-5).any()


def test_imagefolder_needs_torchvision(tmp_path):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed")
    for split in ("train", "val"):
        for label in ("cat", "dog", "emu"):
            (tmp_path / split / label).mkdir(parents=True)
    with pytest.raises(ImportError, match="torchvision"):
        data.load_dataset(str(tmp_path), "val")
    assert data.dataset_info(str(tmp_path)) == dict(in_channels=3, image_size=224, num_classes=3)


@pytest.mark.parametrize("source, split, name", [
    ("mnist", "train", "source"),
    ("digits", "validation", "split"),
    ("digits", "Train", "split"),
])
def test_bad_source_or_split_names_the_argument(source, split, name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        data.load_dataset(source, split)


def test_folder_of_neither_kind_is_rejected(tmp_path):
    (tmp_path / "train").mkdir()  # no val/ or test/ beside it
    with pytest.raises(ValueError, match="'source'"):
        data.load_dataset(str(tmp_path), "train")
    with pytest.raises(ValueError, match="'source'"):
        data.dataset_info(str(tmp_path))


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(batches_a, batches_b))


def test_make_loader_is_reproducible_for_equal_seeds():
    dataset = data.load_dataset("digits", "test")
    first = _batches(data.make_loader(dataset, 64, shuffle=True, seed=3))
    assert _same(first, _batches(data.make_loader(dataset, 64, shuffle=True, seed=3)))
    assert not _same(first, _batches(data.make_loader(dataset, 64, shuffle=True, seed=4)))
    loader = data.make_loader(dataset, 64, shuffle=True, seed=3)
    assert not _same(_batches(loader), _batches(loader))  # a new order every epoch
    in_order = data.make_loader(dataset, 100, shuffle=False, drop_last=True)
    assert len(in_order) == 3 and torch.equal(next(iter(in_order))[1], dataset.tensors[1][:100])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_make_loader_seeds_augmentation(cifar, num_workers):
    dataset = data.load_dataset(str(cifar[0]), "train")
    loaders = [data.make_loader(dataset, 5, shuffle=True, seed=seed, num_workers=num_workers)
               for seed in (1, 1, 2)]
    first, again, other = (_batches(loader) for loader in loaders)
    assert _same(first, again) and not _same(first, other)


@pytest.mark.parametrize("kwargs, name, error", [
    (dict(batch_size=0), "batch_size", ValueError),
    (dict(batch_size=2.0), "batch_size", TypeError),
    (dict(seed=-1), "seed", ValueError),
    (dict(num_workers=-1), "num_workers", ValueError),
    (dict(batch_size=1000, drop_last=True), "batch_size", ValueError),
])
def test_make_loader_bad_arguments(kwargs, name, error):
    dataset = data.load_dataset("digits", "test")
    with pytest.raises(error, match=f"'{name}'"):
        data.make_loader(dataset, **({"batch_size": 8, "shuffle": True} | kwargs))
    with pytest.raises(TypeError, match="'dataset'"):
        data.make_loader([1, 2, 3], 2, shuffle=False)


@pytest.mark.parametrize("content", [b"", b"hello\n1 2 3\n", b"\x80\x04K\x01."])  # empty, text, a pickled int
def test_garbage_cifar_batches_say_what_is_wrong(tmp_path, content):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(content)
    with pytest.raises(ValueError, match="'source'.*is not a CIFAR-10 python batch"):
        data.load_dataset(str(folder), "test")


def test_an_empty_image_folder_says_what_is_wrong(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="'source'.*no class subfolders"):
        data.dataset_info(str(tmp_path))


def test_pruning_calibrates_on_train_images_without_augmentation(cifar, tmp_path, monkeypatch):
    """The calibration and Gram images are train images as stored (no random crop or flip); the
    fine-tuning set stays augmented."""
    from greedyprune.greedy.pipeline import RunSpec, load_run

    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    folder, written = cifar
    loaded = load_run(RunSpec(model="mlp", data=str(folder), calib_samples=8, gram_samples=16, train_epochs=1,
                              progress=False, device="cpu"))
    stored = {image.numpy().tobytes() for image in _normalized(np.concatenate(
        [written[f"data_batch_{i}"][0] for i in range(1, 6)]))}
    assert loaded.calib_x.shape[0] == 8 and sum(x.shape[0] for x in loaded.gram_batches) == 16
    assert all(image.numpy().tobytes() in stored for image in torch.cat([loaded.calib_x, *loaded.gram_batches]))
    assert loaded.train_set.augment


def _merge(parts: list[torch.Tensor]) -> torch.Tensor:
    """A global batch from its parts: position j was read by process j % world, as its (j // world)-th."""
    world = len(parts)
    return torch.stack([parts[j % world][j // world] for j in range(sum(len(p) for p in parts))])


@pytest.mark.parametrize("length, batch_size, drop_last", [(20, 5, False), (23, 6, False), (23, 6, True), (7, 9, False)])
def test_global_batches_deal_each_batch_of_one_permutation_over_the_processes(length, batch_size, drop_last):
    one = list(data.GlobalBatches(length, batch_size, seed=4, drop_last=drop_last))
    order = torch.randperm(length, generator=torch.Generator().manual_seed(4)).tolist()  # DistributedSampler's
    assert sum(one, []) == (order[:length // batch_size * batch_size] if drop_last else order)
    assert all(len(b) == batch_size for b in one[:-1])
    for world in (2, 3):
        parts = [list(data.GlobalBatches(length, batch_size, seed=4, world=world, rank=r, drop_last=drop_last))
                 for r in range(world)]
        assert {len(p) for p in parts} == {len(one)}  # the same number of steps on every process
        for b, batch in enumerate(one):
            assert _merge([torch.tensor(p[b]) for p in parts]).tolist() == batch
            assert max(len(p[b]) for p in parts) - min(len(p[b]) for p in parts) <= 1
    sampler = data.GlobalBatches(length, batch_size, seed=4, drop_last=drop_last)
    sampler.set_epoch(1)
    assert list(sampler) != one  # a new permutation every epoch


def test_a_last_batch_with_fewer_samples_than_processes_is_one_error_naming_the_batch():
    with pytest.raises(ValueError, match=r"'batch_size' \(5\) leaves the dataset's 21 samples a last batch of 1, "
                                         r"fewer than the 3 processes"):
        data.GlobalBatches(21, 5, seed=0, world=3, rank=0)
    data.GlobalBatches(21, 5, seed=0, world=3, rank=0, drop_last=True)  # no last batch: it runs
    with pytest.raises(ValueError, match="'--batch-size'"):
        data.check_global_batch("--batch-size", 5, 21, world=2)
    data.check_global_batch("--batch-size", 5, 20, world=3)


def test_augmented_batches_do_not_depend_on_the_process_or_worker_count(cifar, monkeypatch):
    dataset = data.load_dataset(str(cifar[0]), "train")  # augmented: random crops and flips
    one = data.make_loader(dataset, 7, shuffle=True, seed=2)
    epochs = [_batches(one) for _ in range(2)]
    workers = data.make_loader(dataset, 7, shuffle=True, seed=2, num_workers=2)
    assert all(_same(epoch, _batches(workers)) for epoch in epochs)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])  # another order and draw every epoch
    for world in (2, 3):
        monkeypatch.setattr(data.distributed, "world_size", lambda: world)
        loaders = []
        for r in range(world):
            monkeypatch.setattr(data.distributed, "rank", lambda: r)
            loaders.append(data.make_loader(dataset, 7, shuffle=True, seed=2, shard=True))
        for epoch in epochs:
            parts = [_batches(loader) for loader in loaders]
            merged = [(_merge([p[b][0] for p in parts]), _merge([p[b][1] for p in parts])) for b in range(len(epoch))]
            assert _same(merged, epoch)


def test_torch_random_transforms_are_drawn_from_the_dataset_seed_and_leave_the_global_stream():
    class Noisy(torch.utils.data.Dataset):  # draws from torch's global generator, as torchvision's transforms do
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3), index

    dataset = data._TorchRandomAugmentation(Noisy())
    dataset.reseed(5)
    state = torch.get_rng_state()
    first = [dataset[i] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), state)
    dataset.reseed(5)
    assert all(torch.equal(a[0], dataset[i][0]) for i, a in enumerate(first))
    dataset.reseed(6)
    assert not torch.equal(first[0][0], dataset[0][0])
    loader = data.make_loader(dataset, 2, shuffle=True, seed=1)
    assert loader.augmentation is not None and _same(_batches(loader), _batches(data.make_loader(dataset, 2, shuffle=True,
                                                                                                  seed=1)))
