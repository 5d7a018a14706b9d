"""What every optimizer wrapper shares: an ``Optimizer`` whose ``param_groups`` are the inner one's,
whose ``state`` and ``state_dict()`` are the inner optimizer's with the wrapper's own state added under
prefixed keys (Lookahead, iterate averaging, ActiveLR).

Checkpoint format (``torch.optim``'s, so DCP's ``get_optimizer_state_dict`` / ``set_optimizer_state_dict``,
the Hugging Face ``Trainer`` and Lightning round-trip it): ``{"state": {id: {...}}, "param_groups": [...]}``
where ``param_groups`` are the inner optimizer's and each ``state[id]`` holds the inner optimizer's entries
of that parameter plus the wrapper's, each under ``prefix + name`` (``lookahead_slow_param``,
``lookahead_step``, ...). The wrapper's integer counters ride in every parameter's entry (as torch's Adam
keeps its global ``step`` per parameter): DCP keeps only ``state`` and ``param_groups`` and, with
``flatten_optimizer_state_dict``, only the keys it finds in the live optimizer's ``state`` and
``param_groups``; an entry under ``state`` survives every path. The format adaptim wrote before
(``{"optimizer": ..., "wrapper": name, "state": ..., "extra": ...}``) still loads.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from itertools import chain
from typing import Any, cast

import torch
from torch.optim import Optimizer

__all__ = ["LOW_PRECISION", "OptimizerWrapper"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _shadow(p: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``p``; fp32 for low-precision parameters (averages lose bits in bf16)."""
    p = p.detach()
    return p.float() if p.dtype in LOW_PRECISION else p.clone(memory_format=torch.preserve_format)


class _ParamState(MutableMapping):
    """One parameter's state as ``torch.optim`` tools see it: the inner optimizer's entry and the
    wrapper's own (keys prefixed), read and written through to where each lives."""

    __slots__ = ("_param", "_wrapper")

    def __init__(self, wrapper: OptimizerWrapper, param: Any) -> None:
        self._wrapper = wrapper
        self._param = param

    def _inner(self) -> Any:
        state = self._wrapper.optimizer.state
        return state[self._param] if self._param in state else {}

    def __getitem__(self, key: Any) -> Any:
        w = self._wrapper
        name = w._own_name(key)
        if name is None:
            return self._inner()[key]
        own = w.wrapper_state.get(self._param)
        if not own:
            raise KeyError(key)
        if name in w._scalar_state:
            return getattr(w, w._scalar_state[name])
        return own[name]

    def __setitem__(self, key: Any, value: Any) -> None:
        w = self._wrapper
        name = w._own_name(key)
        if name is None:
            w.optimizer.state[self._param][key] = value
        elif name in w._scalar_state:
            setattr(w, w._scalar_state[name], value)
        else:
            w.wrapper_state[self._param][name] = value

    def __delitem__(self, key: Any) -> None:
        w = self._wrapper
        name = w._own_name(key)
        if name is None:
            del w.optimizer.state[self._param][key]
        elif name in w._scalar_state or name not in w.wrapper_state.get(self._param, {}):
            raise KeyError(key)
        else:
            del w.wrapper_state[self._param][name]

    def __iter__(self) -> Iterator[Any]:
        w = self._wrapper
        yield from list(self._inner())
        own = w.wrapper_state.get(self._param)
        if own:
            yield from [w._prefix + name for name in own]
            yield from [w._prefix + name for name in w._scalar_state]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


class _WrapperState(MutableMapping):
    """``wrapper.state``: parameter -> :class:`_ParamState`, like ``Optimizer.state`` (a defaultdict:
    any parameter can be indexed; only those with state are iterated)."""

    __slots__ = ("_wrapper",)

    def __init__(self, wrapper: OptimizerWrapper) -> None:
        self._wrapper = wrapper

    def __getitem__(self, param: Any) -> Any:
        inner = self._wrapper.optimizer.state
        if param in inner and not isinstance(inner[param], Mapping):
            return inner[param]  # a non-parameter entry of the inner optimizer, kept as it is
        return _ParamState(self._wrapper, param)

    def __setitem__(self, param: Any, value: Any) -> None:
        if not isinstance(value, Mapping):
            self._wrapper.optimizer.state[param] = value
            return
        value = dict(value)  # ``value`` may be a view of this very entry
        if param in self:
            del self[param]
        entry = _ParamState(self._wrapper, param)
        for k, v in value.items():
            entry[k] = v

    def __delitem__(self, param: Any) -> None:
        w = self._wrapper
        if param not in self:
            raise KeyError(param)
        if param in w.optimizer.state:
            del w.optimizer.state[param]
        w.wrapper_state.pop(param, None)

    def __contains__(self, param: object) -> bool:
        return param in self._wrapper.optimizer.state or bool(
            self._wrapper.wrapper_state.get(cast(torch.Tensor, param))
        )

    def get(self, param: Any, default: Any = None) -> Any:
        return self[param] if param in self else default

    def __iter__(self) -> Iterator[Any]:
        w = self._wrapper
        inner = list(w.optimizer.state)
        seen = set(inner)
        yield from inner
        yield from [p for p, s in list(w.wrapper_state.items()) if s and p not in seen]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{type(self._wrapper).__name__}.state({dict(self.items())!r})"


class OptimizerWrapper(Optimizer):
    """Base class of optimizer wrappers: an ``Optimizer`` whose ``param_groups`` are the inner one's.

    Subclasses keep their own per-parameter state in ``self.wrapper_state`` (plain keys, created lazily
    at the first step by :meth:`_init_param`, as ``torch.optim`` creates its state), name their integer
    counters in ``_scalar_state`` (key in the checkpoint -> attribute), choose ``state_prefix`` and act
    after each inner step in :meth:`_after_step`. ``self.state`` shows, and ``state_dict()`` saves, the
    inner optimizer's state with the wrapper's added under ``prefix + key``.

    Hooks: the instance hooks of ``torch.optim.Optimizer`` (step, state_dict, load_state_dict) are
    called. A global ``register_optimizer_step_pre_hook`` / ``post_hook`` fires once per step, reporting
    the wrapper (the object whose ``step()`` was called; its state includes the inner optimizer's),
    around the whole step; the inner optimizer's own instance step hooks still fire around its step.
    """

    state_prefix: str = "wrapper_"
    _scalar_state: dict[str, str] = {}

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__} wraps a torch.optim.Optimizer; got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self.wrapper_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self._prefix = self._unique_prefix()
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._patch_step_function()

    def _unique_prefix(self) -> str:
        """``state_prefix``, numbered when a wrapper inside already uses it (Lookahead(Lookahead(...)))."""
        taken = set()
        inner = self.optimizer
        while isinstance(inner, OptimizerWrapper):
            taken.add(inner._prefix)
            inner = inner.optimizer
        prefix, n = self.state_prefix, 2
        while prefix in taken:
            prefix, n = f"{self.state_prefix.rstrip('_')}{n}_", n + 1
        return prefix

    def _own_name(self, key: Any) -> str | None:
        if isinstance(key, str) and key.startswith(self._prefix):
            return key[len(self._prefix) :]
        return None

    # -- Optimizer interface, delegated --------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> _WrapperState:
        """The inner optimizer's state with the wrapper's own added (keys ``prefix + name``)."""
        return _WrapperState(self)

    @state.setter
    def state(self, value: Mapping[Any, Any]) -> None:
        value = {p: dict(s) if isinstance(s, Mapping) else s for p, s in value.items()}
        view = _WrapperState(self)
        view.clear()
        for p, s in value.items():
            view[p] = s

    def params(self) -> Iterator[torch.Tensor]:
        for group in self.param_groups:
            yield from group["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of the inner optimizer (with ``closure`` if given), then the wrapper's own work."""
        with torch.no_grad():
            self._ensure_state()
        loss = self._step_inner(closure)
        with torch.no_grad():
            self._after_step()
        return loss

    def _step_inner(self, closure: Callable[[], Any] | None) -> Any:
        """``self.optimizer.step(closure)`` without the global step hooks, which fire around this
        wrapper's step already (once per step the user takes); the inner optimizer's own instance hooks
        are called as ``torch.optim`` calls them."""
        inner = self.optimizer
        hooked = type(inner).step
        raw = getattr(hooked, "__wrapped__", None)
        patched = vars(inner).get("step")
        if patched is not None and getattr(patched, "_wrapped_by_lr_sched", False):
            inner._opt_called = True  # type: ignore[attr-defined]  # what the scheduler's patch records
        elif patched is not None or raw is None or not getattr(hooked, "hooked", False):
            return inner.step(closure)  # stepped some other way: leave it to that
        assert raw is not None  # the branch above returned otherwise
        args: tuple[Any, ...] = (inner, closure)
        kwargs: dict[str, Any] = {}
        with torch.autograd.profiler.record_function(f"Optimizer.step#{type(inner).__name__}.step"):
            for pre_hook in list(inner._optimizer_step_pre_hooks.values()):
                result = pre_hook(inner, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(
                            f"{type(inner).__name__}.step pre-hook must return None or a tuple of "
                            f"(new_args, new_kwargs), but got {result}."
                        )
                    args, kwargs = result
            out = raw(*args, **kwargs)
            inner._optimizer_step_code()
            for post_hook in list(inner._optimizer_step_post_hooks.values()):
                post_hook(inner, args, kwargs)
        return out

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._repr_keys())
        return f"{type(self).__name__}({self.optimizer!r}{', ' if extra else ''}{extra})"

    def _repr_keys(self) -> tuple[str, ...]:
        return ()

    # -- state ------------------------------------------------------------------------------------

    def _ensure_state(self) -> None:
        """Create the wrapper's state of every parameter that has none (at each step, so that groups
        added later and parameters loaded without state get theirs)."""
        own = self.wrapper_state
        for p in self.params():
            if not own.get(p):
                self._init_param(p)

    def _packed_ids(self, state_dict: Mapping[str, Any]) -> dict[Any, torch.Tensor]:
        """Saved parameter id -> live parameter, by position in the param groups (as torch loads)."""
        saved = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        live = list(self.params())
        if len(saved) != len(live) or len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the state dict has {len(saved)} parameters in "
                f"{len(state_dict['param_groups'])} groups; this optimizer has {len(live)} in "
                f"{len(self.param_groups)}"
            )
        return dict(zip(saved, live, strict=True))

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s format: the inner optimizer's state dict, each parameter's entry holding
        the wrapper's state too (keys ``prefix + name``, counters included)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        inner = self.optimizer.state_dict()
        index = {p: i for i, p in self._packed_ids(inner).items()}
        state = dict(inner["state"])
        counters = {self._prefix + k: getattr(self, a) for k, a in self._scalar_state.items()}
        for p, own in self.wrapper_state.items():
            if own and p in index:
                i = index[p]
                state[i] = {
                    **state.get(i, {}),
                    **{self._prefix + k: v for k, v in own.items()},
                    **counters,
                }
        state_dict: dict[str, Any] = {**inner, "state": state}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (or the format adaptim saved before, "v1"): the inner
        optimizer's part goes to the inner optimizer, the rest (as copies) to the wrapper."""
        name = type(self).__name__
        state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if isinstance(state_dict, dict) and "wrapper" in state_dict and "optimizer" in state_dict:
            self._load_v1(state_dict)
        elif (
            isinstance(state_dict, dict) and "state" in state_dict and "param_groups" in state_dict
        ):
            self._load(state_dict)
        else:
            raise ValueError(
                f"{name}.load_state_dict expects a state dict saved by {name}.state_dict() (keys "
                f"'state' and 'param_groups', entries '{self._prefix}*'); got "
                f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__}"
            )
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        ids = self._packed_ids(state_dict)
        inner_state: dict[Any, Any] = {}
        own: dict[torch.Tensor, dict[str, Any]] = {}
        counters: dict[str, Any] = {}
        for i, entry in state_dict["state"].items():
            if i not in ids or not isinstance(entry, Mapping):
                inner_state[i] = entry
                continue
            mine = {}
            for key, value in entry.items():
                sub = self._own_name(key)
                if sub is None:
                    inner_state.setdefault(i, {})[key] = value
                elif sub in self._scalar_state:
                    counters.setdefault(sub, value)
                else:
                    mine[sub] = value
            if mine:
                own[ids[i]] = mine
        if not own and not counters and inner_state:
            raise ValueError(
                f"{name}.load_state_dict expects a state dict saved by {name}.state_dict(): this one "
                f"has no '{self._prefix}*' entries (it was saved by another optimizer, e.g. a plain "
                f"{type(self.optimizer).__name__}); to start {name} from it, load it into the inner "
                "optimizer instead"
            )
        self.optimizer.load_state_dict({**state_dict, "state": inner_state})
        self._set_wrapper_state(own)
        for sub, attr in self._scalar_state.items():
            value = counters.get(sub, 0)
            setattr(self, attr, value.item() if isinstance(value, torch.Tensor) else value)

    def _set_wrapper_state(self, own: Mapping[torch.Tensor, Mapping[str, Any]]) -> None:
        """Replace the wrapper's state by copies of ``own``'s, on each parameter's device."""
        self.wrapper_state = defaultdict(dict)
        for p, entry in own.items():
            copied = {
                k: v.to(device=p.device, copy=True) if isinstance(v, torch.Tensor) else v
                for k, v in entry.items()
            }
            self._complete_entry(copied)
            self.wrapper_state[p] = copied

    def _load_v1(self, state_dict: dict[str, Any]) -> None:
        """The format adaptim's wrappers saved up to commit 7a79caf ("v1"): ``{"optimizer": inner_state_dict,
        "wrapper": class name, "state": {position: {...}}, "extra": {attribute: value}}``."""
        name = type(self).__name__
        if state_dict.get("wrapper") != name:
            raise ValueError(
                f"{name}.load_state_dict expects a state dict saved by {name}.state_dict(); got one "
                f"from {state_dict.get('wrapper')}"
            )
        params = list(self.params())
        saved = state_dict["state"]
        if any(not 0 <= int(i) < len(params) for i in saved):
            raise ValueError(
                f"{name}.load_state_dict: the state dict has more parameters than this one"
            )
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._set_wrapper_state({params[int(i)]: entry for i, entry in saved.items()})
        for k, v in state_dict["extra"].items():
            setattr(self, k, v)

    def __getstate__(self) -> dict[str, Any]:
        # ``step`` may be an instance attribute patched by an lr scheduler: not picklable, not state.
        return {k: v for k, v in self.__dict__.items() if k != "step"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "wrapper_state" not in state and "state" in state:  # pickled by a v1 wrapper
            state["wrapper_state"] = state.pop("state")
        self.__dict__.update(state)
        if "_prefix" not in state:
            self._prefix = self._unique_prefix()
        for entry in self.wrapper_state.values():
            self._complete_entry(entry)
        self._patch_step_function()

    # -- hooks for subclasses -----------------------------------------------------------------

    def _init_param(self, p: torch.Tensor) -> None:
        """Create the wrapper's state of one parameter (at the first step that sees it)."""

    def _after_step(self) -> None:
        """Work after each inner step (runs under ``torch.no_grad``)."""

    def _complete_entry(self, entry: dict[str, Any]) -> None:
        """Bring one parameter's loaded (possibly older) wrapper state up to date, in place."""

    @contextlib.contextmanager
    def _swapped_in(self, key: str) -> Iterator[None]:
        """Temporarily copy ``wrapper_state[p][key]`` into every parameter that has it; restore on exit."""
        backup = []
        with torch.no_grad():
            for p in self.params():
                shadow = self.wrapper_state.get(p, {}).get(key)
                if shadow is not None:
                    backup.append((p, p.detach().clone()))
                    p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in backup:
                    p.copy_(saved)
