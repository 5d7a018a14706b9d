"""SGDHess: SGD whose momentum is corrected by a Hessian-vector product along the last step.

Paper: Hoang Tran, Ashok Cutkosky, "Better SGD using Second-order Momentum", NeurIPS 2022; arXiv
2103.03265 ("Correcting Momentum with Second-order Information", 2021).
Reference code: github.com/tranhp98/SGDHess, ``SGDHess_optimizer/SGDHess.py`` at cb80bd7 (the same
class as ``Cifar10/SGDHess.py``, used for the paper's CIFAR-10 runs). We follow it step for step
(tests/optimizers/test_sgdhess.py runs it out of tree, and writes its steps out by hand).

Update, per tensor, with ``d_{t-1} = x_t - x_{t-1}`` the step taken last time (zero at the first)::

    g   = grad f(x_t; xi_t) (+ wd * x_t)
    m_1 = g                                                              (first step)
    m_t = momentum * (m_{t-1} + H_t d_{t-1} + wd * d_{t-1}) + (1 - dampening) * g
    u   = g + momentum * m_t if nesterov else m_t
    d_t = -lr * u ;  x_{t+1} = x_t + d_t

``H_t d_{t-1}`` is the Hessian of the *same* minibatch loss at the *current* point times the last
step: the momentum ``m_{t-1}`` estimates the gradient at ``x_{t-1}``, and ``m_{t-1} + H_t d_{t-1}`` moves
that estimate to ``x_t`` to first order (the paper's "transport" of the momentum); ``wd * d_{t-1}`` is
the same correction for the L2 term, whose Hessian is ``wd * I``. With ``momentum=0`` the buffer is
unused and SGDHess is plain SGD.

How the Hessian-vector product is obtained (``hvp``, cost per step):

* **the gradient's graph** (the reference's interface): call ``loss.backward(create_graph=True)``, then
  ``opt.step()`` (or do so inside a closure). The product is one ``torch.autograd.grad`` of the
  gradients along the last steps: a double backward, about the cost of one more backward pass, once
  per step; the graph of the gradients is kept alive until then (memory of roughly one more backward
  graph). The product is exact.
* **a closure, no graph** (``hvp="auto"`` only; an ordinary ``opt.step(closure)`` loop whose closure
  calls ``loss.backward()``): a forward difference of gradients on the same minibatch,
  ``H d ~ (grad f(x + h d) - grad f(x)) / h`` with ``h = sqrt(eps) (1 + ||x||) / ||d||`` (norms over
  all parameters that moved; ``eps`` of their dtype; Nocedal & Wright, Numerical Optimization, 2nd
  ed., sec. 8.1). One more call of the closure per step (a forward and a backward pass); the random
  number generators (CPU, and the CUDA devices of the parameters) are reset before it, so dropout
  draws the same masks at both points. Approximate: the error is O(h ||d||^2) from the curvature's
  change plus rounding (visible in bf16/fp16). After the step, ``p.grad`` holds the gradient of that
  last call, at ``x + h d``; the step used the one at ``x``, and the returned loss is the one at ``x``.
  The extra forward pass also updates BatchNorm's running statistics a second time.

``hvp="auto"`` (default) uses the graph when the gradients have one, else the closure; ``"autograd"``
refuses to step without the graph. Neither a graph nor a closure: ``RuntimeError`` before anything
changes. ``requires_closure`` is True in the registry's sense: a plain ``backward()`` then ``step()``
cannot work.

Differences from the reference code, none of which changes the step of a single param group with
gradients at every step:

* the Hessian-vector product covers all parameters at once (one double backward per step); the
  reference calls ``autograd.grad`` once per param group, so with several groups (e.g. no weight decay
  on biases) it drops the Hessian blocks between groups and pays one double backward per group;
* a parameter whose gradient does not depend on any parameter (a loss linear in it) gets a zero
  product (``allow_unused``), where the reference stops with an autograd error;
* a parameter without a gradient in a step did not move, so its last step is set to zero; the
  reference keeps the stale one and uses it at the parameter's next step;
* no product is computed where it cannot matter (``momentum == 0``, or no step taken yet);
* the reference's ``clip=True`` is not offered: it calls ``clip_grad_norm_(buf, max_grad)``, which
  clips the ``.grad`` of the tensor it is given, and the buffer has none, so it never changes a step
  (the authors recommend ``clip=False``);
* ``momentum`` defaults to 0.9, the value of the authors' README and of every experiment script (the
  constructor's 0 makes SGDHess plain SGD); the other defaults are the reference's;
* ``maximize`` negates the gradients and their Hessian-vector products.

``fused=True`` compiles the update that follows the product (elementwise given the product, over
flat pieces; core/fused.py); the product itself comes from autograd or the closure, as eagerly.

Not supported: complex parameters, sparse gradients, FSDP2 (DTensor) parameters, and ZeRO (each rank
would see its share of the product). Under ``torch.compile`` the step runs eagerly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch

from adaptim.core.base import LOW_PRECISION, AdaptimOptimizer, TensorBatch, run_eagerly
from adaptim.core.functional import Scalar, l2_weight_decay, scalar_arg
from adaptim.core.fused import run_elementwise
from adaptim.core.validation import UNIT_CLOSED, UNIT_HALF_OPEN, OneOf
from adaptim.registry import OptimInfo, register

__all__ = ["SGDHess"]

#: ``hvp`` choices: the gradient's graph if there is one, else a finite difference through the
#: closure; or the graph only
HVP_MODES = ("auto", "autograd")


def _all_zero(params: list[torch.Tensor]) -> bool:
    return all(not bool(_grad(p).any()) for p in params)


class SGDHess(AdaptimOptimizer):
    """SGDHess (Tran & Cutkosky, NeurIPS 2022): momentum SGD corrected by ``H_t (x_t - x_{t-1})``.

    Drive it with ``loss.backward(create_graph=True); opt.step()`` (exact Hessian-vector product, one
    double backward per step), or with ``opt.step(closure)`` for an ordinary closure (finite
    difference, one more closure call per step). See the module docstring.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        momentum: momentum factor; 0 turns the correction off (plain SGD).
        dampening: the gradient enters the buffer with weight ``1 - dampening``.
        weight_decay: L2 coefficient, added to the gradient (and ``wd * d`` to the correction).
        nesterov: step along ``g + momentum * m``.
        hvp: ``"auto"`` (the gradient's graph when it has one, else a finite difference through
            the closure) or ``"autograd"`` (the graph only).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update that follows the Hessian-vector product compiled (C++ on
            CPU, Triton on CUDA; docs/fused.md) over flat pieces; ``None`` and ``False``: eager.
    """

    hyperparameter_rules = {
        "momentum": UNIT_HALF_OPEN,
        "dampening": UNIT_CLOSED,
        "hvp": OneOf(HVP_MODES),
    }
    state_keys = ("momentum_buffer", "displacement")
    #: ``state_bits=8``: the momentum (signed map); the last step is a difference of parameters
    #: and stays in the working dtype, as copies of parameters do
    quantized_states: ClassVar[Mapping[str, bool]] = {"momentum_buffer": True}
    #: the Hessian-vector product mixes tensors, so real and imaginary parts are not coordinates
    elementwise = False
    #: the step calls autograd (or the closure a second time) and reads norms on the host
    traceable_update = False
    #: an ordinary ``backward()`` then ``step()`` has no way to get the product: a closure (or the
    #: gradient's graph, ``create_graph=True``) is needed
    requires_closure: ClassVar[bool] = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        hvp: str = "auto",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            hvp=hvp,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _validate_relations(self, values: Mapping[str, Any]) -> None:
        if values.get("nesterov") and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ValueError(
                f"{type(self).__name__}: nesterov=True needs momentum > 0 and dampening=0; got "
                f"momentum={values['momentum']!r}, dampening={values['dampening']!r}"
            )

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; ``closure`` zeroes the gradients, computes the loss, calls ``backward()``
        (with ``create_graph=True`` for the exact product) and returns the loss."""
        if torch.compiler.is_compiling():
            return run_eagerly(self.step, closure)
        rng = _rng_state(self._devices()) if closure is not None else None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_gradients()
        with_grad = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        maximize = {p: g["maximize"] for g in self.param_groups for p in g["params"]}
        use_graph = any(_grad(p).requires_grad for p in with_grad)
        moved = self._moved(with_grad)
        # A first step with zero gradients needs no product and has nothing to refuse: it is how
        # torch.distributed.checkpoint creates an optimizer's state (lr 0, no closure).
        if moved or closure is not None or not with_grad or not _all_zero(with_grad):
            self._check_hvp_source(use_graph, closure, with_grad)

        grads_at_x: dict[torch.Tensor, torch.Tensor] | None = None
        hvps: dict[torch.Tensor, torch.Tensor] = {}
        if moved and use_graph:
            hvps = _autograd_hvp(
                with_grad, moved, {p: self.state[p]["displacement"] for p in moved}
            )
        elif moved:
            assert closure is not None and rng is not None  # _check_hvp_source
            grads_at_x, hvps = self._finite_difference_hvp(closure, rng, with_grad, moved)
        for p, hvp in hvps.items():
            if maximize[p]:
                hvp.neg_()

        for group in self.param_groups:
            for batch in self._prepare_group(group):
                if grads_at_x is not None:  # p.grad is now the gradient at x + h d
                    batch.grads = [
                        _as_working(grads_at_x[p], w, group["maximize"])
                        for p, w in zip(batch.originals, batch.params, strict=True)
                    ]
                hvp_of = {
                    id(w): None if p not in hvps else hvps[p].to(w.dtype)
                    for p, w in zip(batch.originals, batch.params, strict=True)
                }
                # with 8-bit momentum, parts of whole tensors (splits_tensors is off), decoded
                # around the unchanged update
                for part in self._decoded_parts(batch):
                    part_hvps = [hvp_of[id(w)] for w in part.params]
                    self._update_with_hvp(group, part, part_hvps, self._use_foreach(group))
                batch.write_back()
            for p in group["params"]:  # it did not move: its next correction has no last step
                if p.grad is None and "displacement" in self.state.get(p, {}):
                    self.state[p]["displacement"].zero_()
        return loss

    def _devices(self) -> list[torch.device]:
        return list({p.device for g in self.param_groups for p in g["params"]})

    def _check_hvp_source(
        self, use_graph: bool, closure: Callable[[], Any] | None, with_grad: list[torch.Tensor]
    ) -> None:
        """Refuse a step that cannot get its Hessian-vector product, before anything changes."""
        if use_graph:
            return
        name = type(self).__name__
        if closure is None:
            raise RuntimeError(
                f"{name}.step() needs the Hessian-vector product of the loss: call "
                "loss.backward(create_graph=True) before step() (exact, one double backward), or "
                "pass a closure that zeroes the gradients, computes the loss and calls backward() "
                "(finite difference, one more closure call per step)"
            )
        graph_only = [i for i, g in enumerate(self.param_groups) if g["hvp"] == "autograd"]
        if graph_only and with_grad:
            raise RuntimeError(
                f"{name}: hvp='autograd' (param group {graph_only[0]}) needs the gradients' graph "
                "for the Hessian-vector product: call loss.backward(create_graph=True) (in the "
                "closure, if you pass one), or use hvp='auto' with a closure"
            )

    def _moved(self, with_grad: list[torch.Tensor]) -> list[torch.Tensor]:
        """The parameters whose last step enters a correction this step: stepped before, in a
        group with momentum."""
        momentum = {p: g["momentum"] for g in self.param_groups for p in g["params"]}
        return [
            p for p in with_grad if "displacement" in self.state.get(p, {}) and momentum[p] != 0
        ]

    def _finite_difference_hvp(
        self,
        closure: Callable[[], Any],
        rng: list[tuple[torch.device, torch.Tensor]],
        with_grad: list[torch.Tensor],
        moved: list[torch.Tensor],
    ) -> tuple[dict[torch.Tensor, torch.Tensor], dict[torch.Tensor, torch.Tensor]]:
        """``(grads at x, H d)``: ``H d ~ (grad(x + h d) - grad(x)) / h`` over the parameters with a
        gradient, ``d`` the last steps of ``moved`` (zero for the others); see the module docstring."""
        steps = [self.state[p]["displacement"] for p in moved]
        step_norm = _norm(steps)
        grads_at_x = {p: _grad(p).detach().clone() for p in with_grad}
        if step_norm == 0.0:
            return grads_at_x, {}
        eps = max(torch.finfo(p.dtype).eps for p in moved)
        h = math.sqrt(eps) * (1.0 + _norm(moved)) / step_norm
        at_x = [p.detach().clone() for p in moved]
        try:
            for p, d in zip(moved, steps, strict=True):
                p.add_(d.to(p.dtype), alpha=h)
            _set_rng_state(rng)  # the same dropout masks as at x
            with torch.enable_grad():
                closure()
            hvps = {}
            for i, p in enumerate(with_grad):
                if p.grad is None:
                    raise RuntimeError(
                        f"{type(self).__name__}: the closure gave parameter {i} (of those with a "
                        "gradient) a gradient at x but none at the nearby point of the finite "
                        "difference; it must compute the same loss each time it is called"
                    )
                dtype = torch.float32 if p.dtype in LOW_PRECISION else p.dtype
                hvps[p] = (p.grad.detach().to(dtype) - grads_at_x[p].to(dtype)).div_(h)
        finally:
            for p, x in zip(moved, at_x, strict=True):
                p.copy_(x)
        return grads_at_x, hvps

    # -- the update, given the products ---------------------------------------------------------

    def _update_with_hvp(
        self,
        group: Mapping[str, Any],
        batch: TensorBatch,
        hvps: list[torch.Tensor | None],
        foreach: bool,
    ) -> None:
        params, grads = batch.params, batch.grads
        bufs, steps = batch.state("momentum_buffer"), batch.state("displacement")
        fused = self._use_fused(group, batch)
        if foreach and not fused:
            _multi_tensor_sgdhess(
                params,
                grads,
                bufs,
                steps,
                hvps,
                batch.steps,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
            )
            return
        # the per-tensor function, eagerly or compiled: tensors with a product and those without
        # in separate calls (a call's lists hold tensors only)
        counts = batch.steps
        for corrected in (True, False):
            idx = [i for i, hvp in enumerate(hvps) if (hvp is not None) == corrected]
            if not idx:
                continue
            run_elementwise(
                _sgdhess_tensors,
                [
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [bufs[i] for i in idx],
                    [steps[i] for i in idx],
                    [hvps[i] for i in idx] if corrected else None,
                ],
                [counts[i] for i in idx],
                lambda step: self._step_scalars(group, step),
                fused=fused,
                plans=self.__dict__.setdefault("_fused_plans", {}),
            )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        # step() hands the products to the function itself (_update_with_hvp)
        return _sgdhess_tensors, ("momentum_buffer", "displacement")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        return dict(
            lr=float(group["lr"]),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            weight_decay=float(group["weight_decay"]),
            nesterov=group["nesterov"],
            # static flags: one graph each way
            with_momentum=group["momentum"] != 0,
            first=step == 1,
        )

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        # step() applies the update with the products; the base class's loop is not used
        raise NotImplementedError("SGDHess updates through step()")


def _sgdhess_tensors(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    last_steps: list[torch.Tensor],
    hvps: list[torch.Tensor] | None,
    *,
    lr: Scalar,
    momentum: Scalar,
    dampening: Scalar,
    weight_decay: Scalar,
    nesterov: bool,
    with_momentum: bool,
    first: bool,
) -> None:
    """The reference form, one tensor at a time, in place: the per-tensor path (Python floats) and,
    compiled, ``fused=True`` (0-dim tensors). ``last_steps[i]`` is ``d``, overwritten by this step;
    ``hvps`` the products ``H d`` (``None``: no correction for these tensors)."""
    for i, param in enumerate(params):
        buf, last_step = bufs[i], last_steps[i]
        grad = grads[i]
        direction = l2_weight_decay(grad, param, weight_decay)
        if with_momentum:
            if first:
                buf.copy_(direction)
            else:
                if hvps is not None:
                    buf.add_(hvps[i])
                buf.add_(last_step, alpha=scalar_arg(weight_decay)).mul_(momentum)
                buf.add_(direction, alpha=scalar_arg(1 - dampening))
            if not nesterov:
                direction = buf
            elif isinstance(momentum, torch.Tensor):  # see l2_weight_decay: no tensor alpha here
                direction = direction + buf * momentum
            else:
                direction = direction.add(buf, alpha=momentum)
        last_step.copy_(direction).mul_(-lr)
        param.add_(last_step)


def _multi_tensor_sgdhess(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    last_steps: list[torch.Tensor],
    hvps: list[torch.Tensor | None],
    steps: list[int],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """:func:`_sgdhess_tensors` over lists (``torch._foreach_*``), the same arithmetic."""
    directions = (
        torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0 else grads
    )
    if momentum != 0:
        first = [i for i, s in enumerate(steps) if s == 1]
        later = [i for i, s in enumerate(steps) if s != 1]
        if first:
            torch._foreach_copy_([bufs[i] for i in first], [directions[i] for i in first])
        if later:
            corrected = [(bufs[i], hvp) for i in later if (hvp := hvps[i]) is not None]
            if corrected:
                torch._foreach_add_([b for b, _ in corrected], [hvp for _, hvp in corrected])
            later_bufs = [bufs[i] for i in later]
            torch._foreach_add_(later_bufs, [last_steps[i] for i in later], alpha=weight_decay)
            torch._foreach_mul_(later_bufs, momentum)
            torch._foreach_add_(later_bufs, [directions[i] for i in later], alpha=1 - dampening)
        if nesterov:
            directions = torch._foreach_add(directions, bufs, alpha=momentum)
        else:
            directions = bufs
    torch._foreach_copy_(last_steps, directions)
    torch._foreach_mul_(last_steps, -lr)
    torch._foreach_add_(params, last_steps)


def _autograd_hvp(
    with_grad: list[torch.Tensor],
    moved: list[torch.Tensor],
    steps: Mapping[torch.Tensor, torch.Tensor],
) -> dict[torch.Tensor, torch.Tensor]:
    """``H d`` for every parameter with a gradient, by one double backward through the gradients'
    graph: the gradient of ``sum_k <grad_k, d_k>`` (``d`` the last steps of ``moved``)."""
    outputs = [p for p in moved if _grad(p).requires_grad]
    if not outputs:  # every moved gradient is constant: its Hessian rows are zero
        return {}
    with torch.enable_grad():
        products = torch.autograd.grad(
            outputs=[_grad(p) for p in outputs],
            inputs=with_grad,
            grad_outputs=[steps[p].to(_grad(p).dtype) for p in outputs],
            allow_unused=True,
        )
    return {p: hv.detach() for p, hv in zip(with_grad, products, strict=True) if hv is not None}


def _grad(param: torch.Tensor) -> torch.Tensor:
    """``param.grad`` of a parameter known to have one."""
    assert param.grad is not None
    return param.grad


def _as_working(grad: torch.Tensor, working: torch.Tensor, maximize: bool) -> torch.Tensor:
    """A gradient as ``_prepare_group`` hands it over: in the working dtype, negated to maximize."""
    grad = grad.to(working.dtype)
    return grad.neg() if maximize else grad


def _norm(tensors: list[torch.Tensor]) -> float:
    """The L2 norm of all ``tensors`` together, accumulated in float64 (no overflow in fp32)."""
    norms = torch._foreach_norm([t.detach() for t in tensors], dtype=torch.float64)
    return float(torch.linalg.vector_norm(torch.stack([n.cpu() for n in norms])))


def _rng_state(devices: list[torch.device]) -> list[tuple[torch.device, torch.Tensor]]:
    """The states of the random number generators a closure on ``devices`` may draw from."""
    states = [(torch.device("cpu"), torch.get_rng_state())]
    for device in devices:
        if device.type == "cuda":
            states.append((device, torch.cuda.get_rng_state(device)))
    return states


def _set_rng_state(states: list[tuple[torch.device, torch.Tensor]]) -> None:
    for device, state in states:
        if device.type == "cpu":
            torch.set_rng_state(state)
        else:
            torch.cuda.set_rng_state(state, device)


register(
    OptimInfo(
        name="sgdhess",
        verified="authors' SGDHess.py run out of tree (float64); hand-computed steps",
        cls=SGDHess,
        paper="Tran & Cutkosky, Better SGD using Second-order Momentum, NeurIPS 2022",
        paper_url="https://arxiv.org/abs/2103.03265",
        reference="github.com/tranhp98/SGDHess@cb80bd7 SGDHess_optimizer/SGDHess.py",
        description="SGD whose momentum is corrected by a Hessian-vector product along the last "
        "step (needs create_graph=True or a closure).",
        supports_complex=False,
        tuned_lr={"quadratic": 0.1, "rosenbrock": 1e-3},
    )
)
