"""SR-popup's default is the paper's "no weight is modified": the search keeps the pre-trained
BatchNorm statistics (bn="keep"); "update" (train mode, the authors' code) is the option."""
import torch
from torch import nn
from torch.utils.data import Subset

from greedyprune.cli import build_parser
from greedyprune.harness.data import load_dataset
from greedyprune.popup.masked import wrap
from greedyprune.popup.search import SearchConfig, search


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(128, 10))


def test_a_default_search_modifies_no_weight_and_no_statistic():
    train = Subset(load_dataset("digits", "train"), range(128))
    test = Subset(load_dataset("digits", "test"), range(64))
    masked = wrap(_cnn())
    before = {k: v.clone() for k, v in masked.state_dict().items() if k not in ("scores", "keep")}
    config = SearchConfig(epochs=1, batch_size=32, sparsity=0.5)
    assert config.bn == "keep"
    search(masked, train, test, config, progress=False)
    after = masked.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert changed == []  # BatchNorm running statistics and batch counts included


def test_the_command_defaults_to_keep_and_offers_update():
    parser = build_parser()
    assert parser.parse_args(["search"]).bn == "keep"
    assert parser.parse_args(["search", "--bn", "update"]).bn == "update"
