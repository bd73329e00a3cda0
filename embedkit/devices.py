"""The one device rule: 'auto' (or None) is CUDA when present, else CPU; any other name is taken
as asked, and a CUDA request on a machine without CUDA is one clear error, never a silent CPU
run (a number measured on the wrong device is a wrong number)."""

from __future__ import annotations

from embedkit.errors import EmbedkitError


def resolve_device(device=None):
    import torch

    name = str(device or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise EmbedkitError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedkitError(
            f"--device {name}: CUDA is not available on this machine (use --device cpu)"
        )
    return dev
