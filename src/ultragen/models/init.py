"""`init_leaf`: the one way model code sets a submodule's weights after that submodule was built; `zero_linear`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def init_leaf(module: nn.Module, init: Callable[[nn.Module], object]) -> None:
    """`init(module)` on a module without children, called through `module.apply`.

    A parent that re-initialises a child's tensors (Wan's xavier linears, zero gates, LoRA factors) does it here
    rather than directly: sharded construction (DeepSpeed ZeRO-3's `zero.Init`) keeps each module's tensors
    partitioned from the end of its own `__init__` and hooks `Module.apply` to gather them around the call, so the
    same code initialises whole tensors there, in the same order, with the same random draws. `init` must touch
    only `module`'s own parameters.
    """
    if next(module.children(), None) is not None:
        raise ValueError(f"init_leaf expects a module without children, got {type(module).__name__}")
    module.apply(init)


def zero_linear(m: nn.Linear) -> None:
    """Zero weight and bias (a layer whose output starts at zero: gates); pass it to `init_leaf`."""
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
