"""adaptim optimizers in Lightning: ``configure_optimizers`` returns an adaptim optimizer (or a wrapper)
with a per-step scheduler; ``Trainer.fit`` saves a checkpoint at the end of each epoch, and a new
``fit(..., ckpt_path=...)`` resumed from the first one ends with exactly the parameters of an
uninterrupted run.

Runs are bounded by ``max_epochs`` and resume at an epoch end: Lightning restarts a plain dataloader
from its first batch on resuming mid-epoch, and with ``max_steps`` instead, Lightning 2.6.6 resumed
this very end-of-epoch checkpoint at batch index 3 of epoch 0 with the dataloader restarted (a batch
sequence the uninterrupted run never sees; torch's own AdamW then differs by 5e-3 too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptim

L = pytest.importorskip("lightning.pytorch")

STEPS_PER_EPOCH, EPOCHS, BATCH = 3, 2, 4

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adan": lambda params: adaptim.Adan(params, lr=1e-2, weight_decay=0.02),
    "lookahead-radam": lambda params: adaptim.Lookahead(
        adaptim.RAdam(params, lr=1e-2), k=2, alpha=0.5
    ),
}


class Regressor(L.LightningModule):
    def __init__(self, make_opt: Callable[[Any], torch.optim.Optimizer]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.make_opt = make_opt

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.body(x), y)

    def configure_optimizers(self) -> Any:
        opt = self.make_opt(self.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 12)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS_PER_EPOCH * BATCH, 4, generator=gen)
    y = x.sum(1, keepdim=True).sin()
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)


def trainer(root: Path, *callbacks: Any) -> Any:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        default_root_dir=str(root),
    )


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\)"
)  # Lightning on torch 2.13
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fit_resumed_from_a_checkpoint_ends_where_an_uninterrupted_fit_does(name, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    full = Regressor(OPTIMIZERS[name])
    start = params(full)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path / "full", checkpoints).fit(full, loader())
    want = params(full)
    assert any(not torch.equal(a, b) for a, b in zip(start, want, strict=True))
    first = tmp_path / "ckpt" / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"
    saved = torch.load(first, weights_only=False)["optimizer_states"][0]
    assert {"state", "param_groups"} <= set(saved)

    resumed = Regressor(OPTIMIZERS[name])
    again = trainer(tmp_path / "resumed")
    again.fit(resumed, loader(), ckpt_path=str(first))
    assert again.global_step == STEPS_PER_EPOCH * EPOCHS
    for got, expected in zip(params(resumed), want, strict=True):
        assert torch.equal(got, expected), f"max diff {(got - expected).abs().max().item():.3e}"
