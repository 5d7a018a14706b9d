"""adaptim.param_groups, adaptim.layerwise_lr_groups and adaptim.create(model)."""

from __future__ import annotations

import doctest
import importlib
from typing import Any

import pytest
import torch
from torch import nn

import adaptim
from adaptim.registry import OptimInfo, registered

pg_module = importlib.import_module(
    "adaptim.param_groups"
)  # the module (adaptim.param_groups is the function)


def names_in(model: nn.Module, group: dict[str, Any]) -> list[str]:
    """Names of a group's parameters, in the group's order (first name of a shared one)."""
    by_id: dict[int, str] = {}
    for name, p in model.named_parameters():
        by_id.setdefault(id(p), name)
    return [by_id[id(p)] for p in group["params"]]


def split(model: nn.Module, **kw: Any) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without) from ``param_groups(model, 0.1, **kw)``."""
    groups = adaptim.param_groups(model, 0.1, **kw)
    decay = [n for g in groups if g["weight_decay"] == 0.1 for n in names_in(model, g)]
    exempt = [n for g in groups if g["weight_decay"] == 0.0 for n in names_in(model, g)]
    assert len(groups) == (1 if decay else 0) + (1 if exempt else 0)
    return decay, exempt


# -- which parameters are exempt from weight decay ---------------------------------------------------

NORMS_AND_EMBEDDINGS = [
    nn.LayerNorm(6),
    nn.LayerNorm((2, 3)),  # a 2-D weight: exempt by type, not by shape
    nn.RMSNorm(6),
    nn.GroupNorm(2, 6),
    nn.BatchNorm1d(6),
    nn.BatchNorm2d(6),
    nn.BatchNorm3d(6),
    nn.SyncBatchNorm(6),
    nn.InstanceNorm1d(6, affine=True),
    nn.InstanceNorm2d(6, affine=True),
    nn.InstanceNorm3d(6, affine=True),
    nn.Embedding(10, 6),
    nn.EmbeddingBag(10, 6),
]


@pytest.mark.parametrize("layer", NORMS_AND_EMBEDDINGS, ids=lambda m: type(m).__name__)
def test_norm_and_embedding_layers_are_exempt_by_type(layer: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"proj": nn.Linear(6, 6), "x": layer, "conv": nn.Conv1d(6, 6, 3)})
    decay, exempt = split(model)
    assert decay == ["proj.weight", "conv.weight"]
    assert exempt == ["proj.bias", *(f"x.{n}" for n, _ in layer.named_parameters()), "conv.bias"]


def test_every_torch_norm_layer_is_listed() -> None:
    """A norm layer torch adds (found by name in torch.nn) must join NORM_TYPES."""
    norms = {
        cls
        for name, cls in vars(nn).items()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and "Norm" in name
    }
    assert norms <= set(pg_module.NORM_TYPES), norms - set(pg_module.NORM_TYPES)
    assert nn.LocalResponseNorm in pg_module.NORM_TYPES


class MyRMSNorm(nn.Module):
    """A custom norm, as model code writes them (found by class name)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class Gain(nn.Module):
    """An anonymous-looking custom norm (found by the name it is held under)."""

    def __init__(self, d: int, matrix: bool = False) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(d, d) if matrix else torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.g


def test_custom_norms_are_exempt_by_name() -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.rms = MyRMSNorm(4)  # class name
    model.ln_f = Gain(4)  # attribute names
    model.ln1 = Gain(4)
    model.final_layer_norm = Gain(4)
    model.bn2 = Gain(4)
    model.attn_ln = Gain(4)
    model.gain = Gain(4)  # neither: decayed
    model.norm_mix = Gain(4, matrix=True)  # a matrix under a norm-like name: decayed
    model.normalizer = nn.Linear(4, 4)  # a Linear under a norm-like name: its weight is decayed
    decay, exempt = split(model)
    assert decay == ["gain.g", "norm_mix.g", "normalizer.weight"]
    assert exempt == [
        "rms.scale",
        "ln_f.g",
        "ln1.g",
        "final_layer_norm.g",
        "bn2.g",
        "attn_ln.g",
        "normalizer.bias",
    ]


def test_no_decay_patterns_match_full_names() -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
    model.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
    model.blocks[0].cls_token = nn.Parameter(torch.zeros(1, 4))
    decay, exempt = split(model, no_decay=["pos_embed", "*.cls_token", "blocks.1.weight"])
    assert decay == ["blocks.0.weight"]
    assert exempt == [
        "pos_embed",
        "blocks.0.bias",
        "blocks.0.cls_token",
        "blocks.1.weight",
        "blocks.1.bias",
    ]
    # case-sensitive, full-name matches only
    decay, _ = split(model, no_decay=["POS_EMBED", "cls_token", "weight"])
    assert decay == ["pos_embed", "blocks.0.weight", "blocks.0.cls_token", "blocks.1.weight"]
    # one pattern as a plain string
    assert split(model, no_decay="pos_embed") == split(model, no_decay=["pos_embed"])


def test_groups_follow_parameter_order_and_skip_frozen_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 2))
    model[2].requires_grad_(False)
    groups = adaptim.param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert set(groups[0]) == set(groups[1]) == {"params", "weight_decay"}  # no lr: the optimizer's
    assert names_in(model, groups[0]) == ["0.weight", "3.weight"]
    assert names_in(model, groups[1]) == ["0.bias", "1.weight", "1.bias", "3.bias"]
    # an empty group is left out; a model with nothing to train gives no group
    assert len(adaptim.param_groups(nn.LayerNorm(3), weight_decay=0.1)) == 1
    assert adaptim.param_groups(model.requires_grad_(False), weight_decay=0.1) == []


@pytest.mark.parametrize("embed_first", [True, False])
def test_tied_weights_appear_once_and_an_embedding_stays_exempt(embed_first: bool) -> None:
    torch.manual_seed(0)
    embed, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied input and output embeddings
    model = nn.Module()
    shared = nn.Linear(4, 4)
    for name, m in [("embed", embed), ("head", head)][:: 1 if embed_first else -1]:
        model.add_module(name, m)
    model.first = shared
    model.again = shared  # one module held twice
    groups = adaptim.param_groups(model, weight_decay=0.1)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == 3
    decay, exempt = split(model)
    assert decay == ["first.weight"]
    assert exempt == ["embed.weight" if embed_first else "head.weight", "first.bias"]


def test_bad_arguments_are_refused_clearly() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        adaptim.param_groups(list(model.parameters()), weight_decay=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight_decay=-0\.1"):
        adaptim.param_groups(model, weight_decay=-0.1)
    with pytest.raises(TypeError, match="no_decay"):
        adaptim.param_groups(model, weight_decay=0.1, no_decay=[1])  # type: ignore[list-item]


# -- layer-wise lr decay ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(3 * d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(self.attn(self.norm1(x)))
        return x + self.mlp(x)


class TinyTransformer(nn.Module):
    """Embeddings, N blocks, final norm, head: the shape BEiT's and ELECTRA's recipes assume."""

    def __init__(self, depth: int = 3, d: int = 8, vocab: int = 11) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, 5, d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def tiny(depth: int = 3) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(depth)


def test_layer_ids_of_a_transformer() -> None:
    model = tiny()
    ids = pg_module.layer_ids(model)
    assert list(ids) == [n for n, _ in model.named_parameters()]
    for name, layer in ids.items():
        if name.startswith(("tok.", "pos")):
            assert layer == 0, name
        elif name.startswith("blocks."):
            assert layer == int(name.split(".")[1]) + 1, name
        else:
            assert name.startswith(("norm.", "head.")) and layer == 4, name
    # a frozen block keeps the depths of the others
    model.blocks[0].requires_grad_(False)
    frozen = pg_module.layer_ids(model)
    assert not any(n.startswith("blocks.0.") for n in frozen)
    assert frozen == {n: i for n, i in ids.items() if not n.startswith("blocks.0.")}
    # without a list of blocks, one layer
    assert set(pg_module.layer_ids(nn.Linear(2, 2)).values()) == {0}


def test_layerwise_lrs_and_weight_decay() -> None:
    model, lr, decay = tiny(), 1e-3, 0.75
    groups = adaptim.layerwise_lr_groups(model, lr=lr, layer_decay=decay, weight_decay=0.05)
    ids = pg_module.layer_ids(model)
    seen: list[str] = []
    expected_order = []
    for layer in range(5):
        for wd in (0.05, 0.0):
            expected_order.append((lr * decay ** (4 - layer), wd))
    assert [(g["lr"], g["weight_decay"]) for g in groups] == expected_order
    assert groups[-2]["lr"] == lr and groups[0]["lr"] == pytest.approx(lr * 0.75**4)
    for g in groups:
        for name in names_in(model, g):
            assert g["lr"] == lr * decay ** (4 - ids[name])
            # biases, LayerNorms, the embedding: exempt; `pos` (a bare 3-D parameter) is decayed
            exempt = name.endswith("bias") or "norm" in name or name.startswith("tok.")
            assert g["weight_decay"] == (0.0 if exempt else 0.05), name
            seen.append(name)
    assert sorted(seen) == sorted(n for n, _ in model.named_parameters())
    # without weight_decay: one group per layer, no weight_decay key (the optimizer's applies)
    plain = adaptim.layerwise_lr_groups(model, lr=lr, layer_decay=decay)
    assert [sorted(g) for g in plain] == [["lr", "params"]] * 5
    assert [g["lr"] for g in plain] == [lr * decay ** (4 - i) for i in range(5)]


def test_layer_of_is_the_users_choice() -> None:
    model = tiny(depth=2)

    def two_halves(name: str) -> int:
        return 1 if name.startswith(("head", "norm", "blocks.1")) else 0

    groups = adaptim.layerwise_lr_groups(model, lr=0.1, layer_decay=0.5, layer_of=two_halves)
    assert [g["lr"] for g in groups] == [0.05, 0.1]
    assert names_in(model, groups[1])[0].startswith("blocks.1.")
    with pytest.raises(ValueError, match=r"layer_of\('pos'\) must be an int >= 0; got -1"):
        adaptim.layerwise_lr_groups(model, lr=0.1, layer_decay=0.5, layer_of=lambda n: -1)
    with pytest.raises(ValueError, match="layer_decay"):
        adaptim.layerwise_lr_groups(model, lr=0.1, layer_decay=1.5)
    with pytest.raises(ValueError, match="layer_decay"):
        adaptim.layerwise_lr_groups(model, lr=0.1, layer_decay=0.0)
    with pytest.raises(ValueError, match="lr"):
        adaptim.layerwise_lr_groups(model, lr=-1.0, layer_decay=0.5)
    with pytest.raises(ValueError, match="no_decay needs a weight_decay"):
        adaptim.layerwise_lr_groups(model, lr=0.1, layer_decay=0.5, no_decay=["pos"])


@pytest.mark.parametrize("name", ["ncg_sgd", "adabelief"])
def test_layerwise_groups_train_with_a_scheduler(name: str) -> None:
    """Explicit lrs serve optimizers without a default lr; a scheduler keeps the layer ratios."""
    model = tiny(depth=2)
    groups = adaptim.layerwise_lr_groups(model, lr=1e-2, layer_decay=0.5, weight_decay=0.01)
    opt = adaptim.create(name, groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    before = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (4, 5), generator=gen)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = [g["lr"] for g in opt.param_groups]
    assert after == pytest.approx([b / 11 for b in before])


def test_groups_work_with_torch_optimizers() -> None:
    model = tiny(depth=1)
    opt = torch.optim.SGD(adaptim.layerwise_lr_groups(model, lr=0.1, layer_decay=0.5), momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.05, 0.1]
    opt = torch.optim.AdamW(adaptim.param_groups(model, weight_decay=0.1), lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_docstring_examples() -> None:
    assert doctest.testmod(pg_module).failed == 0


# -- create(name, model) ---------------------------------------------------------------------------

OPTIMIZERS = registered(kind="optimizer")


@pytest.mark.parametrize("info", OPTIMIZERS, ids=[i.name for i in OPTIMIZERS])
def test_create_from_a_model_splits_weight_decay_and_trains(info: OptimInfo) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)
    frozen = model[0].bias.detach().clone()
    kw = {**info.test_kwargs, "weight_decay": 1e-2}
    opt = adaptim.create(info.name, model, **kw)
    assert isinstance(opt, info.cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-2, 0.0]
    assert names_in(model, opt.param_groups[0]) == ["0.weight", "3.weight"]
    assert names_in(model, opt.param_groups[1]) == ["1.weight", "1.bias", "3.bias"]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=gen)
    y = torch.stack([x[:, 0] - x[:, 1], x[:, 2] * 0.5], dim=1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    with torch.no_grad():
        first = ((model(x) - y) ** 2).mean().item()
    for _ in range(30):
        opt.step(closure)
    with torch.no_grad():
        last = ((model(x) - y) ** 2).mean().item()
    assert last < first, (first, last)
    assert torch.equal(model[0].bias, frozen)


def test_create_from_a_model_without_weight_decay_is_one_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[2].requires_grad_(False)
    opt = adaptim.create("adabelief", model, lr=1e-3)  # AdaBelief's default weight_decay is 0
    assert len(opt.param_groups) == 1
    assert names_in(model, opt.param_groups[0]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    opt = adaptim.create("adamw", model, lr=1e-3, weight_decay=0.0)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0
    # AdamW's default weight_decay (0.01) is in force: split
    opt = adaptim.create("adamw", model, lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    # a bad weight decay is the optimizer's to refuse, as with parameters
    with pytest.raises(ValueError, match="weight_decay"):
        adaptim.create("adamw", model, lr=1e-3, weight_decay=-1.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (3, "got int"),
        (None, "got NoneType"),
        ("weights", "got str"),
        (torch.zeros(3, requires_grad=True), r"got Tensor; for one tensor pass \[tensor\]"),
        ({"params": [torch.zeros(3)]}, r"got dict; for one param group pass \[group\]"),
    ],
)
def test_create_refuses_what_is_not_params_or_a_model(params: Any, message: str) -> None:
    with pytest.raises(
        TypeError, match=r"params must be an nn.Module, or an iterable .*" + message
    ):
        adaptim.create("adam", params)
