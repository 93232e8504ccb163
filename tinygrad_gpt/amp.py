"""float16 mixed precision: float32 master weights and dynamic loss scaling.

The model computes in float16 (half the memory traffic, tensor cores on a GPU), but float16 has
only 10 mantissa bits and a smallest normal number of about 6e-5, so two things are kept apart:

- `MasterWeights`: float32 copies of the parameters. The optimizer updates these; after each step
  they are rounded into the float16 model. Small updates would vanish if added to float16 weights.
- `GradScaler`: the loss is multiplied by a large scale (2**16 to start) before backward, so small
  gradients do not flush to zero in float16; they are divided by it again on the way into the
  float32 masters. A step whose gradients hold an inf or NaN (the scale was too large) is skipped and
  the scale halves; after `growth_interval` clean steps it doubles. These are the rules of
  torch.cuda.amp.GradScaler.

One training step:

    optimizer.zero_grad(); model.zero_grad()
    scaler.scale(loss).backward()                # float16 gradients of loss * scale
    if scaler.unscale_and_check(masters):        # into the float32 masters / scale; False on inf/NaN
        clip_grad_norm_(masters.params, 1.0)
    scaler.step(optimizer, masters)              # skipped on inf/NaN; else step, copy into the model
    scaler.update()                              # halve the scale on inf/NaN, double after 2000 clean steps

`Precision` puts both ways of training behind one interface, so a training loop reads the same for
float32 and float16 (`make_precision(dtype, model)` picks one):

    optimizer = AdamW(precision.param_groups(model.param_groups(0.1)), lr=1e-3)
    precision.zero_grad(optimizer)
    precision.scale_loss(loss).backward()        # float32: the loss itself; float16: loss * scale
    precision.step(optimizer, max_norm=1.0)      # unscale and check, clip, step (skipped on inf/NaN), update
"""

from __future__ import annotations

from tinygrad_gpt import backend
from tinygrad_gpt.optim import clip_grad_norm_
from tinygrad_gpt.tensor import Tensor

MASTER_DTYPE = "float32"


class MasterWeights:
    """float32 copies of a model's parameters that the optimizer updates; the model holds them rounded."""

    def __init__(self, model, dtype="float16"):
        """Copy the model's parameters to float32 masters, then cast the model to `dtype`.

        Args:
            model: a Module (normally float32, e.g. just loaded from a checkpoint).
            dtype: the dtype the model computes in.
        """
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.model_params = [p for _, p in named]
        # a frozen parameter's master does not require grad either (GradSync then leaves its .grad None)
        self.params = [Tensor(p.data.astype(MASTER_DTYPE), requires_grad=p.requires_grad, device=p.device)
                       for p in self.model_params]
        self._master_of = {id(p): m for p, m in zip(self.model_params, self.params)}
        model.to(dtype=dtype)

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """The model's optimizer groups (e.g. GPT.param_groups(wd)) with each parameter replaced by its master."""
        return [{**g, "params": [self._master_of[id(p)] for p in g["params"]]} for g in groups]

    def copy_grads_from_model(self, inv_scale: float) -> bool:
        """Set each master's .grad to its model parameter's gradient times inv_scale, in float32.

        Returns:
            True when every gradient is finite (one host sync at the end, not one per parameter).
        """
        all_finite = None
        for p, master in zip(self.model_params, self.params):
            if p.grad is None:
                master.grad = None
                continue
            xp = backend.get_array_module(p.grad.data)
            grad = p.grad.data.astype(MASTER_DTYPE)  # a new array: the engine's may be shared
            grad *= inv_scale
            finite = xp.isfinite(grad).all()
            all_finite = finite if all_finite is None else all_finite & finite
            master.grad = Tensor(grad, dtype=grad.dtype, device=master.device)
        return all_finite is None or bool(all_finite)

    def grads_finite(self) -> bool:
        """True when every master's gradient is finite (e.g. again after averaging them over ranks)."""
        all_finite = True
        for master in self.params:
            if master.grad is not None:
                all_finite = all_finite & backend.get_array_module(master.grad.data).isfinite(master.grad.data).all()
        return bool(all_finite)

    def copy_to_model(self) -> None:
        """Round the masters into the model's parameters, in place."""
        for p, master in zip(self.model_params, self.params):
            p.data[...] = master.data

    def state_dict(self) -> dict:
        """Parameter name -> float32 master array, the layout of Module.state_dict (not copies)."""
        return {name: master.data for name, master in zip(self.names, self.params)}


class GradScaler:
    """Dynamic loss scaling for float16 gradients, with torch.cuda.amp.GradScaler's rules and defaults."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        if not (init_scale > 0 and growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1):
            raise ValueError(
                f"GradScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1; "
                f"got {init_scale}, {growth_factor}, {backoff_factor}, {growth_interval}"
            )
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.growth_tracker = 0  # clean steps since the scale last changed
        self.found_inf = False  # of the current step, set by unscale_and_check

    def scale(self, loss: Tensor) -> Tensor:
        """loss * scale, to call backward on (the loss should be float32: 2**16 overflows float16)."""
        return loss * self.scale_value

    def unscale_and_check(self, masters: MasterWeights) -> bool:
        """Divide the model's gradients by the scale into the float32 masters.

        Returns:
            True when every gradient is finite, so the step may be taken.
        """
        self.found_inf = not masters.copy_grads_from_model(1.0 / self.scale_value)
        return not self.found_inf

    def step(self, optimizer, masters: MasterWeights) -> bool:
        """Step the optimizer and copy the masters into the model, unless unscale_and_check found inf/NaN.

        Returns:
            Whether the step was taken (False: weights and optimizer state are unchanged).
        """
        if self.found_inf:
            return False
        optimizer.step()
        masters.copy_to_model()
        return True

    def update(self) -> None:
        """Halve the scale after an inf/NaN step; double it after growth_interval clean steps in a row."""
        if self.found_inf:
            self.scale_value *= self.backoff_factor
            self.growth_tracker = 0
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.growth_tracker = 0
        self.found_inf = False

    def state_dict(self) -> dict:
        """The scale and its counters, JSON-friendly (for a checkpoint's meta)."""
        return {
            "scale": self.scale_value,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "growth_tracker": self.growth_tracker,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (ValueError for a missing or bad entry)."""
        try:
            restored = GradScaler(
                state["scale"], state["growth_factor"], state["backoff_factor"], state["growth_interval"]
            )
            tracker = int(state["growth_tracker"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"GradScaler.load_state_dict: bad or missing entry ({e!r})") from None
        if not 0 <= tracker < restored.growth_interval:
            raise ValueError(
                f"GradScaler.load_state_dict: growth_tracker {tracker} is outside [0, {restored.growth_interval})"
            )
        self.__dict__.update(restored.__dict__, growth_tracker=tracker)


# ---------------------------------------------------------------- one interface for both precisions


class Precision:
    """float32 training: backward of the loss itself, then clip and step the model's own parameters.

    The base of MixedPrecision, whose methods have the same meaning; a loop written against this
    interface reads the same for both (see the module docstring).
    """

    dtype = "float32"

    def __init__(self, model):
        self.model = model
        self.params = list(model.parameters())  # what the optimizer updates and clipping measures

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """The optimizer groups to give AdamW, from the model's (e.g. GPT.param_groups(wd))."""
        return groups

    def zero_grad(self, optimizer) -> None:
        """Clear every gradient a step accumulates (call before the backward passes of a step)."""
        optimizer.zero_grad()

    def scale_loss(self, loss: Tensor) -> Tensor:
        """What to call backward on: the loss itself here; several backward passes may accumulate."""
        return loss

    def step(self, optimizer, max_norm: float = 0.0, reduce_grads=None) -> bool:
        """Clip the gradients' total norm to max_norm (0: no clipping) and step the optimizer.

        Args:
            reduce_grads: called with no arguments once the gradients of `self.params` are final and
                before clipping (data parallelism averages them over ranks: GradSync.allreduce_).
        Returns:
            Whether the step was taken (always here; False in float16 when a gradient is inf/NaN).
        """
        if reduce_grads is not None:
            reduce_grads()
        if max_norm > 0:
            clip_grad_norm_(self.params, max_norm)
        optimizer.step()
        return True

    def weights(self) -> dict:
        """The float32 weights a checkpoint keeps, by parameter name (the model's state_dict here)."""
        return self.model.state_dict()

    def state_dict(self) -> dict:
        """What a resume needs besides weights and optimizer, as JSON-friendly entries of a checkpoint's meta."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a dict holding state_dict()'s entries (e.g. a checkpoint's meta; other keys are ignored)."""

    def metrics(self) -> dict:
        """Numbers worth logging with each step's loss (none here)."""
        return {}


class MixedPrecision(Precision):
    """float16 training: float32 MasterWeights that the optimizer updates, and a GradScaler."""

    def __init__(self, model, dtype: str = "float16", scaler: GradScaler | None = None):
        """Keep float32 masters of the model's parameters, then cast the model to `dtype`."""
        self.model, self.dtype = model, dtype
        self.masters = MasterWeights(model, dtype=dtype)
        self.scaler = scaler if scaler is not None else GradScaler()
        self.params = self.masters.params

    def param_groups(self, groups: list[dict]) -> list[dict]:
        return self.masters.param_groups(groups)

    def zero_grad(self, optimizer) -> None:
        optimizer.zero_grad()  # the masters' gradients
        self.model.zero_grad()  # the float16 model's, which backward accumulates into

    def scale_loss(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss)

    def step(self, optimizer, max_norm: float = 0.0, reduce_grads=None) -> bool:
        """Unscale into the masters, clip and step unless a gradient is inf/NaN, then update the scale."""
        finite = self.scaler.unscale_and_check(self.masters)
        if reduce_grads is not None:  # on the float32 masters; an inf/NaN of any rank spreads to every rank's sum
            reduce_grads()
            finite = self.masters.grads_finite()
            self.scaler.found_inf = not finite
        if finite and max_norm > 0:
            clip_grad_norm_(self.params, max_norm)
        stepped = self.scaler.step(optimizer, self.masters)
        self.scaler.update()
        return stepped

    def weights(self) -> dict:
        return self.masters.state_dict()

    def state_dict(self) -> dict:
        return {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "grad_scaler" in state:  # a float32 checkpoint has none: the scale starts afresh
            self.scaler.load_state_dict(state["grad_scaler"])

    def metrics(self) -> dict:
        return {"loss_scale": self.scaler.scale_value}


def make_precision(dtype: str, model) -> Precision:
    """Precision for 'float32' (the model as it is), MixedPrecision for 'float16' (casts the model)."""
    if dtype == "float32":
        return Precision(model)
    if dtype == "float16":
        return MixedPrecision(model, dtype)
    raise ValueError(f"make_precision: dtype must be 'float32' or 'float16', got {dtype!r}")
