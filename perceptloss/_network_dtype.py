"""``NetworkDtype``: the dtype state of a loss's frozen network (what was asked, what it runs in, "auto")."""
from __future__ import annotations

import torch

from ._dtypes import network_dtype
from .hardware import resolve_dtype, warn_if_emulated


class NetworkDtype:
    """The dtype state of a loss's frozen network: what was asked (``dtype=``), what it runs in, and how
    ``"auto"`` follows the device on ``.to()`` / ``.cuda()`` (bfloat16 only where the device computes it natively).

    ``dtype`` None: the network as built (float32).
    """

    def __init__(self, option: torch.dtype | str | None) -> None:
        self.request = option if isinstance(option, str) else None  # "auto", or None for an explicit dtype
        self.dtype = resolve_dtype(option, "cpu")
        self.device_type = "cpu"

    def install(self, net: torch.nn.Module, shared: bool) -> None:
        """Convert a new frozen ``net`` to ``dtype``; a shared module (the owner's) keeps its own dtype, so a
        ``dtype=`` it does not have cannot apply and is refused (converting it would change the owner's model)."""
        if shared and self.dtype is not None:
            own = network_dtype(net)
            if self.request == "auto" or (own is not None and own != self.dtype):
                asked = "'auto'" if self.request == "auto" else str(self.dtype)
                raise ValueError(
                    f"share_module=True reads your module as it is, in its own dtype ({own}), so dtype={asked} cannot "
                    f"apply (converting it would change your model): convert the module yourself (module.to(dtype)) "
                    f"and leave dtype unset, run the loss under torch.autocast, or drop share_module=True for a "
                    f"private frozen copy in that dtype"
                )
        if self.dtype is not None and not shared:
            net.to(self.dtype)
        if self.request is None:
            warn_if_emulated(self.dtype, "cpu")

    def follow_device(self, net: torch.nn.Module) -> None:
        """With ``"auto"``: after ``net`` moved to another kind of device, run it in that device's choice."""
        if self.request != "auto":
            return
        device = next((t.device for t in net.buffers()), None)
        if device is not None and device.type != self.device_type:
            self.device_type = device.type
            self.dtype = resolve_dtype("auto", device)
            net.to(self.dtype)
