"""adaptim optimizers in the Hugging Face ``Trainer``: passed as ``optimizers=(opt, scheduler)`` or
built by the Trainer from ``optimizer_cls_and_kwargs``, and a wrapper (Lookahead); a run saved at a
checkpoint and resumed with ``resume_from_checkpoint`` ends with exactly the parameters of an
uninterrupted run (CPU, one thread, seeded data order; the Trainer restores the model from safetensors,
the optimizer and scheduler state dicts and the RNG states, and skips the batches already seen)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import adaptim

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

STEPS, SAVE_AT, BATCH = 6, 3, 4


class TinyRegressor(nn.Module):
    """A plain ``nn.Module`` that returns what the Trainer expects: a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.body(x)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyRegressor()


def dataset() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 4, generator=gen)
    y = x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(STEPS * BATCH, 1, generator=gen)
    return [{"x": a, "labels": b} for a, b in zip(x, y, strict=True)]


def arguments(out: Path) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        save_strategy="steps",
        save_steps=SAVE_AT,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
        lr_scheduler_type="linear",
        learning_rate=1e-2,
    )


def plain(m: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    opt = adaptim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (2 * STEPS))


def lookahead(m: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    opt = adaptim.Lookahead(adaptim.AdaBelief(m.parameters(), lr=1e-2), k=2, alpha=0.5)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (2 * STEPS))


def trainer(out: Path, how: str) -> Any:
    m = model()
    kwargs: dict[str, Any] = {}
    if how == "optimizers":
        kwargs["optimizers"] = plain(m)
    elif how == "lookahead":
        kwargs["optimizers"] = lookahead(m)
    else:
        kwargs["optimizer_cls_and_kwargs"] = (adaptim.AdaBelief, {"lr": 1e-2, "eps": 1e-12})
    return transformers.Trainer(model=m, args=arguments(out), train_dataset=dataset(), **kwargs)


def params(t: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


@pytest.mark.parametrize("how", ["optimizers", "optimizer_cls_and_kwargs", "lookahead"])
def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_does(how, tmp_path):
    full = trainer(tmp_path / "full", how)
    start = params(full)
    full.train()
    want = params(full)
    assert any(not torch.equal(a, b) for a, b in zip(start, want, strict=True))
    checkpoint = tmp_path / "full" / f"checkpoint-{SAVE_AT}"
    assert (checkpoint / "optimizer.pt").is_file()
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert {"state", "param_groups"} <= set(saved)
    if how == "lookahead":
        assert "lookahead_slow_param" in saved["state"][0]
        assert type(full.optimizer.optimizer).__name__ == "Lookahead"  # under accelerate's wrapper
    elif how == "optimizer_cls_and_kwargs":
        assert isinstance(full.optimizer.optimizer, adaptim.AdaBelief)

    resumed = trainer(tmp_path / "resumed", how)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == STEPS
    for got, expected in zip(params(resumed), want, strict=True):
        assert torch.equal(got, expected), f"max diff {(got - expected).abs().max().item():.3e}"
