"""Datasets for the pruning drivers: scikit-learn's bundled digits (no download),
CIFAR-10 from its python-pickle folder, and ImageFolder trees (needs torchvision).

`load_dataset(source, split)` gives a map-style Dataset of (image float32 [C, H, W],
label int64); `make_loader` a DataLoader whose order and augmentation follow `seed`. The train
split is augmented (random crop and flip) unless `augment=False`; ImageFolder images are
preprocessed as an `ImageTransform` says (a published model's: model_source.published_transform).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .. import distributed
from ..checks import ArgumentError, arg_error, check_int
from ..extras import require

SPLITS = ("train", "test", "val")  # "val" is an alias of "test"

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_FOLDER = "cifar-10-batches-py"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class ImageTransform:
    """How an ImageFolder image becomes a tensor: its shorter side resized to `resize` and a
    centre crop of `crop` (augmented train images: a random resized crop of `crop` and a
    horizontal flip), with `interpolation`, then normalised by `mean` and `std` per channel.
    The default is the usual ImageNet evaluation (256 / 224, bilinear, ImageNet mean and std)."""

    crop: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        check_int("image_size", self.crop, minimum=1)
        check_int("resize", self.resize, minimum=1)
        if self.interpolation not in INTERPOLATIONS:
            raise arg_error("interpolation", f"must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not (isinstance(values, tuple) and values and all(isinstance(v, (int, float)) for v in values)):
                raise arg_error(name, f"must be a tuple of numbers, one per channel, got {values!r}")
        if len(self.mean) != len(self.std):
            raise arg_error("std", f"has {len(self.std)} values but mean has {len(self.mean)}")
        if not all(v > 0 for v in self.std):
            raise arg_error("std", f"must be > 0, got {self.std}")


def load_dataset(source: str, split: str, *, image_size: int = 224, transform: ImageTransform | None = None,
                 augment: bool | None = None) -> Dataset:
    """The `split` ("train" or "test"; "val" = "test") of `source`.

    source: "digits" (scikit-learn's 8x8 digits, 1437 train / 360 test images),
    a CIFAR-10 python-pickle folder (data_batch_1..5, test_batch, or its parent),
    or an ImageFolder root with train/ and val/ (or test/) subfolders. For ImageFolder only:
    `transform` (default: ImageTransform with crop `image_size`, resize image_size * 256 / 224).
    augment: random crop and flip (default: for the train split; digits have none).
    """
    split = _check_split(split)
    kind, root = _classify_source(source)
    augment = split == "train" if augment is None else augment
    if transform is not None and kind != "imagefolder":
        raise arg_error("transform", f"applies to ImageFolder roots only; {str(source)!r} is {kind}, whose images "
                                     "are used as stored")
    if kind == "digits":
        return _digits(split)
    if kind == "cifar10":
        return CIFAR10(root, train=split == "train", augment=augment)
    if transform is None:
        check_int("image_size", image_size, minimum=1)
        transform = ImageTransform(crop=image_size, resize=round(image_size * 256 / 224))
    return _image_folder(root, split, transform, augment)


def source_kind(source: str) -> str:
    """"digits", "cifar10" or "imagefolder": what `source` is (an error naming 'source' if none)."""
    return _classify_source(source)[0]


def default_workers(source: str) -> int:
    """Data-loading worker processes for `source`: ImageFolder images are decoded and transformed
    per sample, so up to 8 workers (this process's share of the cores under torchrun); digits and
    CIFAR-10 are tensors in memory, where workers only add start-up time (0)."""
    if source_kind(source) != "imagefolder":
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // distributed.world_size() - 1))


def dataset_info(source: str) -> dict:
    """in_channels, image_size and num_classes of `source`, without loading its images
    (ImageFolder: classes = subfolders of train/, image_size = the default crop, 224)."""
    kind, root = _classify_source(source)
    if kind == "digits":
        return dict(in_channels=1, image_size=8, num_classes=10)
    if kind == "cifar10":
        return dict(in_channels=3, image_size=32, num_classes=10)
    classes = [d for d in os.scandir(root / "train") if d.is_dir()]
    if not classes:
        raise arg_error("source", f"ImageFolder root {str(root)!r}: train/ holds no class subfolders "
                                  "(expected train/<class>/<image> and val/<class>/<image>)")
    return dict(in_channels=3, image_size=224, num_classes=len(classes))


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False, shard: bool | None = None) -> DataLoader:
    """A DataLoader whose order and augmentation (if the dataset draws any) follow `seed`.

    Equal seeds give equal batches. Each sample's augmentation is drawn from its own seed, a
    function of the epoch's key (drawn from the loader's generator) and the sample's index, so it
    does not depend on which process or worker reads the sample.

    shard (default: when torchrun started several processes): each process reads its share and
    `batch_size` is the global batch. Shuffled loaders draw one permutation per epoch from `seed`
    whatever the process count (DistributedSampler's draw, its epoch advanced at every pass):
    global batch b is samples b*batch_size .. (b+1)*batch_size - 1 of it, as in one process, and
    process r reads every world_size-th of them from the r-th on (`GlobalBatches`; shares differ
    by at most one sample, nothing is padded). A last batch with fewer samples than processes is
    refused, naming batch_size. Unshuffled ones read every world_size-th sample, for measurements
    summed over the processes (`evaluate`). The loader's `sharded` attribute says which it is.
    """
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise arg_error("dataset", f"must be a map-style Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise arg_error("dataset", "is empty")
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("num_workers", num_workers, minimum=0)
    if drop_last and batch_size > len(dataset):
        raise arg_error("batch_size", f"({batch_size}) exceeds the dataset's {len(dataset)} samples with "
                                      "drop_last=True: the loader would be empty")
    if shard is None:
        shard = distributed.active()
    world, rank = (distributed.world_size(), distributed.rank()) if shard else (1, 0)
    base = _augmented_base(dataset)
    augmentation = None if base is None else _PerSampleAugmentation(dataset, base)
    if augmentation is not None:
        dataset = augmentation
    # one process shuffles with GlobalBatches too: the same permutation as any number of processes
    batches = GlobalBatches(len(dataset), batch_size, seed=seed, world=world, rank=rank,
                            drop_last=drop_last) if shuffle else None
    if not shuffle and world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))
        batch_size = -(-batch_size // world)
    sampled = batches is not None  # the batch sampler then owns the batch size and drop_last
    loader = _SeededLoader(dataset, batch_sampler=batches, batch_size=1 if sampled else batch_size,
                           generator=torch.Generator().manual_seed(seed), num_workers=num_workers,
                           drop_last=False if sampled else drop_last)
    loader.sharded = world > 1
    loader.augmentation = augmentation
    return loader


def check_global_batch(name: str, batch_size: int, length: int, *, world: int | None = None,
                       drop_last: bool = False) -> None:
    """An error naming `name` where a global batch of `batch_size` over `length` samples leaves a
    last batch with fewer samples than the `world` processes (default: torchrun's), so that one
    of them would read none."""
    world = distributed.world_size() if world is None else world
    last = 0 if drop_last else length % batch_size
    if 0 < last < world:
        raise arg_error(name, f"({batch_size}) leaves the dataset's {length} samples a last batch of {last}, "
                              f"fewer than the {world} processes, so a process would read none; choose a batch "
                              f"size that leaves none or at least {world}")


class GlobalBatches(Sampler):
    """One process's part of every global batch: the epoch's permutation of `length` samples is
    torch.randperm(length) from seed + epoch (DistributedSampler's draw), global batch b holds its
    samples b*batch_size .. (b+1)*batch_size - 1 (the last one shorter, or dropped with drop_last),
    and process `rank` of `world` takes every world-th of them from the rank-th on. Every process
    has the same number of batches; with one process they are the whole global batches."""

    def __init__(self, length: int, batch_size: int, *, seed: int, world: int = 1, rank: int = 0,
                 drop_last: bool = False):
        self.length, self.batch_size, self.seed, self.world, self.rank = length, batch_size, seed, world, rank
        self.drop_last = drop_last
        self.epoch = 0
        check_global_batch("batch_size", batch_size, length, world=world, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length // self.batch_size if self.drop_last else -(-self.length // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for b in range(len(self)):
            yield order[b * self.batch_size + self.rank:min((b + 1) * self.batch_size, self.length):self.world].tolist()


class CIFAR10(Dataset):
    """CIFAR-10 from its pickle batches, kept as uint8 and normalized per item.

    The train split is augmented with a random 32x32 crop of the image zero-padded by 4
    and a random horizontal flip, drawn from the dataset's own generator (`reseed`).
    """

    def __init__(self, root: str | os.PathLike, *, train: bool, augment: bool | None = None, seed: int = 0):
        root = Path(root)
        files = CIFAR10_TRAIN_FILES if train else (CIFAR10_TEST_FILE,)
        images, labels = zip(*(_read_cifar_batch(root / name) for name in files))
        self.images = torch.from_numpy(np.concatenate(images))  # uint8 [n, 3, 32, 32]
        self.labels = torch.from_numpy(np.concatenate(labels))  # int64 [n]
        self.augment = train if augment is None else augment
        self._mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
        self._generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream from `seed`."""
        self._generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255
        if self.augment:
            image = self._random_crop_flip(image)
        return (image - self._mean) / self._std, self.labels[index]

    def _random_crop_flip(self, image: torch.Tensor, padding: int = 4) -> torch.Tensor:
        size = image.shape[-1]
        padded = F.pad(image, (padding,) * 4)  # black border, as in the usual uint8 pipeline
        top, left = torch.randint(0, 2 * padding + 1, (2,), generator=self._generator).tolist()
        image = padded[:, top:top + size, left:left + size]
        if torch.rand((), generator=self._generator) < 0.5:
            image = image.flip(-1)
        return image.contiguous()


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise arg_error("split", f"must be one of {SPLITS}, got {split!r}")
    return "test" if split == "val" else split


def _classify_source(source) -> tuple[str, Path | None]:
    """("digits" | "cifar10" | "imagefolder", the folder to read)."""
    if not isinstance(source, (str, os.PathLike)):
        raise arg_error("source", f"must be a str or path, got {type(source).__name__}")
    if source == "digits":
        return "digits", None
    root = Path(source).expanduser()
    if not root.is_dir():
        raise arg_error("source", "must be 'digits' or an existing folder (CIFAR-10 pickle batches or an "
                                  f"ImageFolder root), got {str(source)!r}")
    for folder in (root, root / CIFAR10_FOLDER):
        if (folder / CIFAR10_TEST_FILE).is_file() or (folder / CIFAR10_TRAIN_FILES[0]).is_file():
            return "cifar10", folder
    if (root / "train").is_dir() and _eval_folder(root) is not None:
        return "imagefolder", root
    raise arg_error("source", f"folder {str(source)!r} holds neither CIFAR-10 pickle batches (data_batch_1..5, "
                              "test_batch) nor train/ and val/ ImageFolder subfolders")


def _eval_folder(root: Path) -> Path | None:
    return next((root / name for name in ("val", "test") if (root / name).is_dir()), None)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, ...]:
    """Standardized digits as (x_train, y_train, x_test, y_test); computed once per process."""
    require("sklearn", "scikit-learn", "the bundled digits data set")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [n, 1, 8, 8]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_train.mean(), x_train.std()  # train statistics only, so the test split stays unseen
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return tuple(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test))


def _digits(split: str) -> TensorDataset:
    x_train, y_train, x_test, y_test = _digits_arrays()
    return TensorDataset(x_train, y_train) if split == "train" else TensorDataset(x_test, y_test)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 3, 32, 32], int64 [n]) from one pickle batch (rows are R, G, B planes of 32x32)."""
    if not path.is_file():
        raise ArgumentError(f"greedyprune: argument 'source': CIFAR-10 batch file {str(path)!r} is missing")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the format is a pickle: the folder must be trusted
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except OSError:
        raise
    except Exception as err:  # unpickling garbage raises many kinds
        raise arg_error("source", f"{str(path)!r} is not a CIFAR-10 python batch (a pickled dict with b'data' and "
                                  f"b'labels'; {type(err).__name__}); is the folder cifar-10-batches-py?") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ArgumentError(f"greedyprune: argument 'source': {str(path)!r} is not a CIFAR-10 batch "
                            f"(data {data.shape}, {len(labels)} labels)")
    return data.reshape(-1, 3, 32, 32), labels


def _image_folder(root: Path, split: str, transform: ImageTransform, augment: bool) -> Dataset:
    try:
        from torchvision import datasets, transforms
    except ImportError as err:
        raise ImportError(f"greedyprune: source {str(root)!r} is an ImageFolder root, which needs torchvision "
                          "(pip install torchvision); 'digits' and CIFAR-10 folders do not") from err
    interpolation = transforms.InterpolationMode(transform.interpolation)
    if augment:
        steps = [transforms.RandomResizedCrop(transform.crop, interpolation=interpolation),
                 transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(transform.resize, interpolation=interpolation), transforms.CenterCrop(transform.crop)]
    folder = root / "train" if split == "train" else _eval_folder(root)
    steps += [transforms.ToTensor(), transforms.Normalize(transform.mean, transform.std)]
    try:
        images = datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))
    except FileNotFoundError as err:  # no class subfolders, or no image files in them
        raise arg_error("source", f"ImageFolder {str(folder)!r} holds no images in class subfolders "
                                  f"(<class>/<image>): {err}") from None
    return _TorchRandomAugmentation(images) if augment else images


class _TorchRandomAugmentation(Dataset):
    """A dataset whose transforms draw from torch's global generator (torchvision's random crops
    and flips), made reseedable: every item draws them from a seed taken from the dataset's own
    generator, with the global generator's state kept as it was."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self._generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream from `seed`."""
        self._generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=self._generator)))
            return self.dataset[index]


def _augmented_base(dataset: Dataset):
    """The dataset under any Subset wrappers if it draws its own augmentation, else None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if callable(getattr(dataset, "reseed", None)) else None


def _sample_seed(key: int, index: int) -> int:
    """A 63-bit seed for sample `index` in the epoch keyed `key` (splitmix64's finaliser, so that
    neighbouring indices and keys give unrelated seeds)."""
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


class _PerSampleAugmentation(Dataset):
    """`dataset` with each sample's augmentation drawn from _sample_seed(key, index): the same
    sample gets the same augmentation in an epoch whichever process or worker reads it. `base`
    (the dataset that draws it, under any Subset) is reseeded before every item."""

    def __init__(self, dataset: Dataset, base):
        self.dataset, self.base, self.key = dataset, base, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.base.reseed(_sample_seed(self.key, index))
        return self.dataset[index]


class _SeededLoader(DataLoader):
    """A DataLoader that moves its GlobalBatches to the next epoch and draws the epoch's
    augmentation key from its generator at every pass (at iteration, not construction, so loaders
    sharing one dataset stay independent; before the workers start, so they copy it)."""

    sharded = False
    augmentation: _PerSampleAugmentation | None = None
    _epoch = 0

    def __iter__(self):
        if isinstance(self.batch_sampler, GlobalBatches):
            self.batch_sampler.set_epoch(self._epoch)
            self._epoch += 1
        if self.augmentation is not None:
            self.augmentation.key = int(torch.randint(2**62, (), generator=self.generator))
        return super().__iter__()

    def position(self) -> dict:
        """What the next epoch's order and augmentation are drawn from, for a checkpoint."""
        return {"epoch": self._epoch, "generator": self.generator.get_state()}

    def restore(self, position: dict) -> None:
        """Continue where `position` was taken: the next epoch draws what it would have."""
        self._epoch = int(position["epoch"])
        self.generator.set_state(position["generator"])
