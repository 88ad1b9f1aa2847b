"""Weights that accelerate keeps off the device: reading them and writing edits back.

With ``--device auto --max-memory ...`` a model larger than memory loads through accelerate
(``device_map="auto"``): modules that do not fit keep their parameters on the ``meta`` device and an
``AlignDevicesHook`` loads them from an offload store (the checkpoint's safetensors, or ``.dat``
files in an offload folder) for each forward pass. Forward passes and hooks work unchanged; what
does not is reading a weight outside a forward pass (a meta tensor has no values) and editing one
(writing into a meta tensor does nothing: an edit that silently vanishes). Every weight read and
write in lmedit goes through :func:`read` and :func:`write`:

* ``read`` returns the real values: the parameter itself when it is in memory, else the offload
  store's copy;
* ``write`` copies into an in-memory parameter, or writes the new values to the offload folder and
  points the store's index at them. The user's own checkpoint files are never written.

``save_pretrained`` reads offloaded parameters from the same store, so a saved checkpoint carries
the edits.
"""

from __future__ import annotations

import torch
from torch import nn

from editor.errors import UserError


def is_offloaded(tensor: torch.Tensor | None) -> bool:
    return tensor is not None and tensor.device.type == "meta"


def _weights_map(module: nn.Module):
    """The accelerate store that holds ``module``'s own parameters, if it has one."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            return h.weights_map
    return None


def read(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """``module.<name>``'s values (for offloaded parameters: a copy from the offload store)."""
    param = getattr(module, name, None)
    if not is_offloaded(param):
        return param
    store = _weights_map(module)
    if store is None:
        raise UserError(f"{type(module).__name__}.{name} is on the meta device and no offload store holds it")
    return store[name]


def write(module: nn.Module, name: str, values: torch.Tensor) -> None:
    """Set ``module.<name>`` to ``values``: in place when in memory, else in the offload folder."""
    param = getattr(module, name)
    if not is_offloaded(param):
        with torch.no_grad():
            param.copy_(values.to(param.device, param.dtype))
        return
    store = _weights_map(module)
    if store is None:
        raise UserError(f"{type(module).__name__}.{name} is on the meta device and no offload store holds it")
    loader, key = store.dataset, f"{store.prefix}{name}"
    if key in loader.state_dict:  # offloaded to CPU memory
        loader.state_dict[key] = values.detach().to("cpu").clone()
        return
    if not loader.save_folder:
        raise UserError(f"{key} is offloaded without an offload folder; lmedit cannot write an edit back")
    from accelerate.utils import offload_weight

    # A .dat file of our own in the offload folder; the index entry stops pointing at the checkpoint.
    offload_weight(values.detach().to("cpu").contiguous(), key, loader.save_folder, index=loader.index)


def require_in_memory(model: nn.Module, what: str) -> None:
    """``what`` (shrinking, training) builds or trains new weights from the whole model: refuse an
    offloaded one in one line rather than compute with meta tensors."""
    if any(is_offloaded(p) for p in model.parameters()):
        raise UserError(f"{what} needs the whole model in memory; load it without a memory limit "
                        "(leave out --max-memory)")


