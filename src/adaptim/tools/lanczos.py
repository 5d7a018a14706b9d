"""Lanczos estimates of the Hessian's spectrum from Hessian-vector products, and an lr/momentum learner.

Paper: Granziol, Zohren & Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix Theory
Approach to Neural Network Training", JMLR 23 (2022), arXiv:2006.09092. Authors' code:
github.com/diegogranziol/rmt_damping_dl (commit fd946ed): ``optimizers/lanczosopt.py`` (Lanczos
tridiagonalisation of the mini-batch Hessian through Hessian-vector products, via GPyTorch) and
``eigenthings/lr_sgd.py`` (an on-the-fly learning rate from Hessian-vector products). Read to
understand, not copied.

What the abstract says (verified): "Based on our investigations of the sub-sampled Hessian we develop a
stochastic Lanczos quadrature based on the fly learning rate and momentum learner". The body, where the
learner's rule is stated, could not be retrieved here, so the rule below is RECONSTRUCTED from the
classical result the learner rests on (Polyak 1964, heavy ball on a quadratic whose Hessian has its
spectrum in ``[mu, L]``)::

    lr       = 4 / (sqrt(L) + sqrt(mu))^2
    momentum = ((sqrt(L) - sqrt(mu)) / (sqrt(L) + sqrt(mu)))^2      (contraction sqrt(momentum))
    without momentum: lr = 2 / (L + mu)                             (contraction (L-mu)/(L+mu))

for ``torch.optim.SGD(lr=lr, momentum=momentum)``. ``L`` is the largest Ritz value of a few Lanczos
steps on the (mini-batch) Hessian, which converges first and from below. A network's Hessian has
eigenvalues at or below zero, so ``mu`` is the smallest Ritz value floored at ``curvature_floor * L``
(default ``1e-2``: a condition number of at most 100, momentum at most 0.67). Polyak's pair puts the
top eigenvalue on the edge of the heavy ball's stability region (``lr L = 2 (1 + momentum)`` when
``mu << L``), so the rule has no margin: on a 3-4-2 tanh MLP (full batch, 10 Lanczos steps) a floor of
``1e-3`` (momentum 0.88) diverged even when re-estimated every step, while ``1e-2`` trained (see
``docs/tools.md``).

The spectral tools are standard numerical linear algebra: Lanczos with full reorthogonalisation
(Golub & Van Loan, "Matrix Computations", section 10.1) and stochastic Lanczos quadrature (Ubaru, Chen
& Saad, SIAM J. Matrix Anal. Appl. 38(4), 2017): with ``m`` Lanczos steps from a unit probe ``v``, the
eigenvalues ``theta_k`` of the tridiagonal matrix and the squared first components ``tau_k`` of its
eigenvectors give ``v^T f(H) v ~ sum_k tau_k f(theta_k)``, exact for polynomials of degree ``< 2m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "LanczosLearner",
    "LanczosResult",
    "SpectralDensity",
    "SpectrumEstimate",
    "heavy_ball_hyperparameters",
    "hessian_vector_product",
    "lanczos",
    "stochastic_lanczos_quadrature",
    "top_eigenvalues",
]

Matvec = Callable[[torch.Tensor], torch.Tensor]


def _check_int(fn: str, name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{fn}: invalid {name}={value!r}; accepted values: an integer >= {low}")
    return value


def _check_matvec(fn: str, matvec: object) -> None:
    if not callable(matvec):
        raise TypeError(
            f"{fn}: matvec must be callable (a vector of length dim -> its product with the "
            f"matrix); got {type(matvec).__name__}"
        )


# -- Hessian-vector products ----------------------------------------------------------------------


def hessian_vector_product(loss: torch.Tensor, params: Iterable[torch.Tensor]) -> Matvec:
    """``v -> H v`` for the Hessian of the scalar ``loss`` with respect to ``params``, flattened.

    The gradient is taken once with ``create_graph=True``; each product differentiates ``<grad, v>``
    again (double backward) and keeps the graph, so the returned function may be called many times.
    ``v`` has ``sum(p.numel())`` entries, in the order of ``params``.
    """
    params = list(params)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("hessian_vector_product: loss must be a scalar tensor with a graph")
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError(
            "hessian_vector_product: params must be a non-empty list of tensors with "
            "requires_grad=True"
        )
    # a parameter the loss does not use, or uses linearly, has a gradient without a graph: its rows
    # of the Hessian are zero, and autograd refuses to differentiate it again, so leave it out
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    curved = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    sizes = [p.numel() for p in params]
    dim = sum(sizes)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.shape != (dim,):
            raise ValueError(
                f"hessian_vector_product: v must have shape ({dim},); got {tuple(v.shape)}"
            )
        pieces = [
            piece.view_as(p).to(p.dtype) for piece, p in zip(v.split(sizes), params, strict=True)
        ]
        hv: list[torch.Tensor | None] = [None] * len(params)
        if curved:
            found = torch.autograd.grad(
                [grads[i] for i in curved],
                params,
                grad_outputs=[pieces[i] for i in curved],
                retain_graph=True,
                allow_unused=True,
            )
            hv = list(found)
        return torch.cat(
            [
                (torch.zeros_like(p) if h is None else h).reshape(-1)
                for h, p in zip(hv, params, strict=True)
            ]
        ).to(v.dtype)

    return matvec


# -- Lanczos ---------------------------------------------------------------------------------------


@dataclass
class LanczosResult:
    """``num_steps`` Lanczos steps: the tridiagonal matrix ``T`` (``alphas`` on its diagonal, ``betas``
    off it) and the orthonormal basis ``Q`` (columns) with ``Q^T A Q = T``."""

    alphas: torch.Tensor  # (m,)
    betas: torch.Tensor  # (m-1,)
    basis: torch.Tensor  # (dim, m)

    @property
    def num_steps(self) -> int:
        return int(self.alphas.numel())

    def tridiagonal(self) -> torch.Tensor:
        return (
            torch.diag(self.alphas)
            + torch.diag(self.betas, diagonal=1)
            + torch.diag(self.betas, diagonal=-1)
        )

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Ritz values (ascending) and the eigenvectors of ``T`` (columns)."""
        return torch.linalg.eigh(self.tridiagonal())

    def ritz_values(self) -> torch.Tensor:
        return torch.linalg.eigvalsh(self.tridiagonal())


def lanczos(
    matvec: Matvec,
    dim: int,
    num_steps: int,
    *,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    tol: float = 1e-10,
) -> LanczosResult:
    """Lanczos tridiagonalisation of the symmetric operator ``matvec`` (size ``dim``).

    Each new vector is orthogonalised twice against the whole basis (full reorthogonalisation): with
    plain three-term recursion the basis loses orthogonality once a Ritz value converges and copies of
    it appear. The run stops early (an invariant subspace was found) when the next off-diagonal
    element is below ``tol`` times the largest magnitude seen, so ``num_steps`` is an upper bound;
    with ``num_steps >= dim`` the Ritz values are the eigenvalues (distinct ones, when the start
    vector sees each eigenspace). ``start`` defaults to a Gaussian vector drawn from ``generator``.
    """
    fn = "lanczos"
    _check_matvec(fn, matvec)
    dim = _check_int(fn, "dim", dim)
    num_steps = min(_check_int(fn, "num_steps", num_steps), dim)
    if start is None:
        start = torch.randn(dim, generator=generator, dtype=dtype).to(device)
    elif start.shape != (dim,):
        raise ValueError(f"{fn}: start must have shape ({dim},); got {tuple(start.shape)}")
    q = start.to(dtype=dtype, device=device)
    norm = q.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(f"{fn}: start must be a finite, non-zero vector")
    q = q / norm
    basis = [q]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    scale = 0.0
    for k in range(num_steps):
        w = matvec(q).to(dtype)
        alpha = torch.dot(q, w)
        alphas.append(alpha)
        stacked = torch.stack(basis, dim=1)
        for _ in range(2):  # twice is enough (Kahan, Parlett: "twice is enough")
            w = w - stacked @ (stacked.T @ w)
        beta = w.norm()
        scale = max(scale, abs(float(alpha)), float(beta))
        if k == num_steps - 1 or float(beta) <= tol * scale:
            break
        betas.append(beta)
        q = w / beta
        basis.append(q)
    return LanczosResult(
        torch.stack(alphas),
        torch.stack(betas) if betas else torch.zeros(0, dtype=dtype, device=device),
        torch.stack(basis[: len(alphas)], dim=1),
    )


# -- stochastic Lanczos quadrature ---------------------------------------------------------------


@dataclass
class SpectralDensity:
    """Gauss quadrature of the spectral density, one row per probe vector: ``nodes[i, k]`` (Ritz values)
    and ``weights[i, k]`` (each row sums to 1; rows shorter than the longest are padded with weight 0).

    The estimated density is ``(1/n_probes) sum_i sum_k weights[i, k] delta(x - nodes[i, k])``.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    dim: int

    def moment(self, power: int) -> float:
        """Estimate of ``tr(H^power) / dim``."""
        return float((self.weights * self.nodes**power).sum(1).mean())

    def trace(self) -> float:
        """Estimate of ``tr(H)`` (Hutchinson's estimator when the probes have norm sqrt(dim))."""
        return self.dim * self.moment(1)

    def density(self, grid: torch.Tensor, bandwidth: float) -> torch.Tensor:
        """The estimate smoothed by a Gaussian of standard deviation ``bandwidth``, on ``grid``."""
        if not bandwidth > 0:
            raise ValueError(
                f"density: invalid bandwidth={bandwidth!r}; accepted values: a number > 0"
            )
        diff = grid.reshape(-1, 1, 1) - self.nodes.unsqueeze(0)
        kernel = torch.exp(-0.5 * (diff / bandwidth) ** 2) / (bandwidth * math.sqrt(2 * math.pi))
        return (kernel * self.weights.unsqueeze(0)).sum(2).mean(1)


def stochastic_lanczos_quadrature(
    matvec: Matvec,
    dim: int,
    num_steps: int,
    num_probes: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> SpectralDensity:
    """The spectral density of the symmetric operator ``matvec`` by stochastic Lanczos quadrature.

    Each of ``num_probes`` Rademacher vectors starts a Lanczos run of ``num_steps`` steps; its Ritz
    values are the quadrature nodes and the squared first components of the tridiagonal matrix's
    eigenvectors the weights.
    """
    fn = "stochastic_lanczos_quadrature"
    num_probes = _check_int(fn, "num_probes", num_probes)
    rows = []
    for _ in range(num_probes):
        probe = (torch.randint(0, 2, (dim,), generator=generator, dtype=dtype) * 2 - 1).to(device)
        result = lanczos(matvec, dim, num_steps, start=probe, dtype=dtype, device=device)
        theta, vectors = result.ritz()
        rows.append((theta, vectors[0] ** 2))
    width = max(t.numel() for t, _ in rows)
    nodes = torch.zeros(num_probes, width, dtype=dtype, device=device)
    weights = torch.zeros_like(nodes)
    for i, (theta, tau) in enumerate(rows):
        nodes[i, : theta.numel()] = theta
        weights[i, : tau.numel()] = tau
    return SpectralDensity(nodes, weights, dim)


# -- the learner ---------------------------------------------------------------------------------


def heavy_ball_hyperparameters(
    lambda_max: float, lambda_min: float, momentum: bool = True
) -> tuple[float, float]:
    """Polyak's optimal ``(lr, momentum)`` for a quadratic whose Hessian spectrum is in
    ``[lambda_min, lambda_max]`` (``momentum=False``: the optimal plain gradient step, momentum 0)."""
    fn = "heavy_ball_hyperparameters"
    for name, value in (("lambda_max", lambda_max), ("lambda_min", lambda_min)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{fn}: invalid {name}={value!r}; accepted values: a finite number")
    if not 0 < lambda_min <= lambda_max:
        raise ValueError(
            f"{fn}: need 0 < lambda_min <= lambda_max; got lambda_min={lambda_min!r}, "
            f"lambda_max={lambda_max!r}"
        )
    if not momentum:
        return 2.0 / (lambda_max + lambda_min), 0.0
    root_max, root_min = math.sqrt(lambda_max), math.sqrt(lambda_min)
    lr = 4.0 / (root_max + root_min) ** 2
    beta = ((root_max - root_min) / (root_max + root_min)) ** 2
    return lr, beta


@dataclass
class SpectrumEstimate:
    """What one call of :meth:`LanczosLearner.estimate` found: the Ritz values (ascending) and the
    extremes the rule uses (``lambda_min`` already floored)."""

    ritz_values: torch.Tensor
    lambda_max: float
    lambda_min: float


class LanczosLearner:
    """On-the-fly learning rate and momentum from a Lanczos estimate of the Hessian's extreme
    eigenvalues (Granziol, Zohren & Roberts, arXiv:2006.09092; rule RECONSTRUCTED, see the module).

    ``params``: the parameters whose Hessian is estimated (the model's, usually). ``loss_fn``: a
    function of no arguments that returns the loss to differentiate (e.g. on a held mini-batch: the
    paper estimates the mini-batch Hessian). ``num_steps`` Lanczos steps per estimate;
    ``curvature_floor`` in ``(0, 1]``: ``mu = max(smallest Ritz value, curvature_floor * L)``;
    ``momentum``: learn the momentum too (heavy ball) or only a plain gradient step.

    >>> learner = LanczosLearner(model.parameters(), lambda: loss_fn(model(x), y))  # doctest: +SKIP
    >>> lr, beta = learner.update(optimizer)   # sets each param group's lr (and momentum)  # doctest: +SKIP
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        loss_fn: Callable[[], torch.Tensor],
        num_steps: int = 20,
        curvature_floor: float = 1e-2,
        momentum: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        fn = "LanczosLearner"
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError(f"{fn}: params has no tensor with requires_grad=True")
        if not callable(loss_fn):
            raise TypeError(f"{fn}: loss_fn must be a callable returning the scalar loss")
        self.loss_fn = loss_fn
        self.num_steps = _check_int(fn, "num_steps", num_steps)
        if (
            isinstance(curvature_floor, bool)
            or not isinstance(curvature_floor, int | float)
            or not 0 < curvature_floor <= 1
        ):
            raise ValueError(
                f"{fn}: invalid curvature_floor={curvature_floor!r}; accepted values: a number in (0, 1]"
            )
        self.curvature_floor = float(curvature_floor)
        if not isinstance(momentum, bool):
            raise TypeError(f"{fn}: momentum must be True or False; got {momentum!r}")
        self.momentum = momentum
        self.generator = generator
        self.last: SpectrumEstimate | None = None

    def estimate(self) -> SpectrumEstimate:
        """Run Lanczos on the Hessian of ``loss_fn()`` at the current parameters."""
        with torch.enable_grad():
            matvec = hessian_vector_product(self.loss_fn(), self.params)
            dim = sum(p.numel() for p in self.params)
            ref = self.params[0]
            dtype = ref.dtype if ref.dtype.is_floating_point else torch.float64
            result = lanczos(
                matvec,
                dim,
                self.num_steps,
                generator=self.generator,
                dtype=dtype,
                device=ref.device,
            )
        ritz = result.ritz_values().detach()
        lam_max = float(ritz[-1])
        if not lam_max > 0 or not math.isfinite(lam_max):
            raise ValueError(
                f"LanczosLearner: the largest Ritz value is {lam_max:.6g}; the rule needs positive "
                "curvature (is the loss at a maximum, or constant?)"
            )
        lam_min = max(float(ritz[0]), self.curvature_floor * lam_max)
        self.last = SpectrumEstimate(ritz, lam_max, lam_min)
        return self.last

    def hyperparameters(self) -> tuple[float, float]:
        """``(lr, momentum)`` from a fresh estimate (momentum 0 when ``momentum=False``)."""
        est = self.estimate()
        return heavy_ball_hyperparameters(est.lambda_max, est.lambda_min, self.momentum)

    def update(self, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        """Estimate, then set ``lr`` (and ``momentum``) in every param group of ``optimizer``.

        Nothing is changed when the optimizer's groups lack a ``momentum`` entry and the learner has
        ``momentum=True`` (``ValueError``): use ``torch.optim.SGD``-like heavy ball.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"LanczosLearner.update: expected a torch.optim.Optimizer; got {type(optimizer).__name__}"
            )
        if self.momentum and not all("momentum" in g for g in optimizer.param_groups):
            raise ValueError(
                "LanczosLearner.update: momentum=True needs param groups with a 'momentum' entry "
                "(e.g. torch.optim.SGD); construct the learner with momentum=False otherwise"
            )
        lr, beta = self.hyperparameters()
        for group in optimizer.param_groups:
            group["lr"] = lr
            if self.momentum:
                group["momentum"] = beta
        return lr, beta


def top_eigenvalues(
    matvec: Matvec,
    dim: int,
    k: int,
    num_steps: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Sequence[float]:
    """The ``k`` largest Ritz values (descending) after ``num_steps`` Lanczos steps."""
    k = _check_int("top_eigenvalues", "k", k)
    ritz = lanczos(matvec, dim, num_steps, generator=generator, dtype=dtype).ritz_values()
    return [float(x) for x in ritz.flip(0)[:k]]
