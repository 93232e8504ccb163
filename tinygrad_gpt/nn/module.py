"""Module: the base class of layers and models, which finds its parameters by walking its attributes.

Any attribute that is a Parameter (a leaf Tensor with requires_grad=True), a Module, or a list,
tuple or dict holding them (a `ModuleList`, or plain containers, nested too) is registered
automatically, as in micrograd's `nn.py` and DeZero's `Layer`: there is no `register_parameter`.
Names are dotted paths with list items numbered and dict entries keyed (`h.0.attn.c_attn.weight`,
`heads.a.weight`), the names GPT-2's checkpoints use. A set cannot name its items: a set holding
parameters or modules is an error.

A parameter frozen with `requires_grad_(False)` stays a parameter (in `parameters()` and
`state_dict()`, so a checkpoint of a partly frozen model loads into a fresh one); optimizers skip
it because it gets no gradient. Other tensors that do not require grad (a sinusoidal position
table) are buffers: `to()` moves and casts them with the parameters, but they are not parameters
and not in `state_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterator

from tinygrad_gpt import backend
from tinygrad_gpt.tensor import Tensor


class Module:
    """Base class of layers and models: parameters, submodules, state dicts and train/eval mode."""

    training: bool = True  # a class default, so subclasses that skip super().__init__() still work

    def __init__(self):
        self.training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ walking the tree

    def _children(self) -> Iterator[tuple[str, object]]:
        """(name, Parameter | Module) for this module's own attributes, in definition order."""
        for name, value in vars(self).items():
            yield from self._members(name, value)

    def _members(self, name: str, value) -> Iterator[tuple[str, object]]:
        """(dotted name, Parameter | Module) for one attribute: itself, or its items when it is a container."""
        if isinstance(value, Tensor):
            if _is_parameter(value):
                yield name, value
        elif isinstance(value, Module):
            yield name, value
        elif isinstance(value, (list, tuple)):  # items numbered
            for i, item in enumerate(value):
                yield from self._members(f"{name}.{i}", item)
        elif isinstance(value, dict):  # entries keyed
            for key, item in value.items():
                found = list(self._members(f"{name}.{key}", item))
                if found and not (isinstance(key, (str, int)) and "." not in str(key)):
                    raise TypeError(f"{type(self).__name__}.{name}: key {key!r} holds parameters or modules, so it "
                                    "names them in state_dict(); use a str without '.' or an int")
                yield from found
        elif isinstance(value, (set, frozenset)) and any(isinstance(v, (Tensor, Module)) for v in value):
            raise TypeError(f"{type(self).__name__}.{name} is a set holding tensors or modules: a set has no order, "
                            "so they cannot be named in state_dict(); use a list or a dict")

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module ('' is itself) and every submodule, depth first."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            subs = [(f"{name}.{n}" if name else n, m) for n, m in module._children() if isinstance(m, Module)]
            stack.extend(reversed(subs))

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """(dotted name, parameter) pairs; a parameter shared by two attributes is listed once, under its first name."""
        seen = set()
        for prefix, module in self.named_modules():
            for name, value in module._children():
                if isinstance(value, Tensor) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{prefix}.{name}" if prefix else name), value

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def _buffers(self) -> Iterator[tuple[Module, str, Tensor]]:
        """(owner, attribute name, tensor) for tensors that do not require grad (moved by `to`)."""
        for module in self.modules():
            for name, value in vars(module).items():
                if isinstance(value, Tensor) and not value.requires_grad and not _is_parameter(value):
                    yield module, name, value

    def num_parameters(self) -> int:
        """Number of scalar parameters (tied weights counted once)."""
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Parameter name -> raw array (not a copy: the arrays change as the model trains)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters, in place (optimizers that view them stay linked).

        Every entry is checked before any is written, so a failed load changes nothing.

        Args:
            state: name -> array (numpy, cupy, Tensor or nested lists) of the parameter's shape.
            strict: when True, a missing or unexpected name is an error; shapes are always checked.
        Raises:
            ValueError naming the missing, unexpected or wrongly shaped entries.
        """
        params = dict(self.named_parameters())
        values = {name: _as_host_or_device_array(value, name) for name, value in state.items()}
        problems = []
        if strict:
            missing = [n for n in params if n not in values]
            unexpected = [n for n in values if n not in params]
            if missing:
                problems.append(f"missing {_names(missing)}")
            if unexpected:
                problems.append(f"unexpected {_names(unexpected)}")
        wrong = [f"{n!r} has shape {tuple(v.shape)}, the model needs {params[n].shape}"
                 for n, v in values.items() if n in params and tuple(v.shape) != params[n].shape]
        if wrong:
            more = f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""
            problems.append("wrong shapes: " + "; ".join(wrong[:5]) + more)
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + ", ".join(problems))
        for name, value in values.items():
            if name in params:
                p = params[name]
                p.data[...] = backend.asarray(value, dtype=p.dtype, device=p.device)

    # ------------------------------------------------------------ modes and devices

    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active) on this module and every submodule; returns self."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        """Set evaluation mode (dropout is the identity); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (they accumulate across backward calls otherwise)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device: str | None = None, dtype=None) -> Module:
        """Move and/or cast parameters, their gradients and float buffers; returns self.

        This rebinds each parameter's `.data` to a new array, so create the optimizer after calling
        `to()`: one made before keeps the old arrays.
        """
        if dtype is not None and not backend.is_float(dtype):
            raise TypeError(f"to(): parameters need a float dtype, got {backend.as_dtype(dtype)}")
        for p in self.parameters():
            p.data = _convert(p.data, device, dtype)
            if p.grad is not None:
                p.grad = Tensor(p.grad, dtype=dtype or p.grad.dtype, device=device or p.grad.device)
        for owner, name, t in self._buffers():
            cast = dtype if backend.is_float(t.dtype) else None
            setattr(owner, name, Tensor(t, dtype=cast or t.dtype, device=device or t.device))
        return self

    # ------------------------------------------------------------ printing

    def extra_repr(self) -> str:
        """The constructor arguments shown in repr (override in layers)."""
        return ""

    def __repr__(self) -> str:
        children = [(n, m) for n, m in self._children() if isinstance(m, Module)]
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        extra = self.extra_repr()
        lines = [f"{type(self).__name__}("] + ([f"  {extra}"] if extra else [])
        lines += [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules whose parameters register, named by position (`h.0`, `h.1`, ...)."""

    def __init__(self, modules=()):
        super().__init__()
        self._items: list[Module] = []
        self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
        self._items.append(module)
        return self

    def extend(self, modules) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def _children(self):
        return ((str(i), m) for i, m in enumerate(self._items))

    def __getitem__(self, i):
        return ModuleList(self._items[i]) if isinstance(i, slice) else self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)

    def __repr__(self) -> str:
        if not self._items:
            return f"{type(self).__name__}()"
        lines = [f"{type(self).__name__}("]
        # identical consecutive items print once, as torch does: (0-11): 12 x Block(...)
        reprs = [repr(m) for m in self._items]
        start = 0
        while start < len(reprs):
            end = start
            while end + 1 < len(reprs) and reprs[end + 1] == reprs[start]:
                end += 1
            body = reprs[start].replace("\n", "\n  ")
            label = f"({start})" if end == start else f"({start}-{end}): {end - start + 1} x"
            lines.append(f"  {label}: {body}" if end == start else f"  {label} {body}")
            start = end + 1
        return "\n".join(lines) + "\n)"


class Sequential(ModuleList):
    """Modules applied one after another: Sequential(Linear(2, 8), ReLU(), Linear(8, 1))."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self._items:
            x = module(x)
        return x


# ---------------------------------------------------------------- helpers


def _is_parameter(t: Tensor) -> bool:
    """A leaf that requires grad, or did until `requires_grad_(False)` froze it (not an intermediate result)."""
    return t._ctx is None and (t.requires_grad or getattr(t, "_frozen", False))


def _names(names: list, limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _as_host_or_device_array(value, name: str):
    """A state-dict value as an array (left where it is), or a TypeError naming the entry."""
    if isinstance(value, Tensor):
        return value.data
    if backend.is_array(value):
        array = value
    else:
        try:
            array = backend.asarray(value, device="cpu")
        except (TypeError, ValueError) as e:
            raise TypeError(f"load_state_dict: entry {name!r} is not an array ({e})") from None
    if array.dtype.kind not in "fiub":
        raise TypeError(f"load_state_dict: entry {name!r} has non-numeric dtype {array.dtype}")
    return array


def _convert(array, device, dtype):
    return backend.asarray(array, dtype=dtype, device=device or backend.device_of(array))
