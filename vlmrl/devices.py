"""Where torch runs. The one device resolver: every model (CLIP labeler, VLM labeler, reward nets, offline agents)
turns its ``device`` option into a ``torch.device`` here, with the same checks and messages.

torch is imported inside the function, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vlmrl.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device a ``device`` option names.

    ``"auto"`` is CUDA when a GPU is visible, else the CPU. Anything else goes to
    ``torch.device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``) and is checked.

    Raises:
        ConfigError: the value is not a device (``"gpu"``, ``"cuda:x"``), or it names CUDA when
            CUDA is not available here, or a CUDA index this machine does not have.
    """
    import torch

    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(f"invalid device {str(device)!r} (use 'auto', 'cpu', 'cuda' or 'cuda:N'): {error}") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(device)!r} requested but CUDA is not available here; use 'cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"device {str(device)!r} requested but only {count} CUDA device(s) are visible here")
    return resolved


__all__ = ["resolve_device"]


SMALL_BATCH = 64
"""Batches up to this many items run on one CPU thread (see :func:`one_thread_for_small_batches`)."""


@contextlib.contextmanager
def one_thread_for_small_batches(items: int) -> Iterator[None]:
    """Run a small batch's torch work on one CPU thread.

    A few items gain nothing from intra-op threads, and on a busy CPU the thread pool's hand-offs
    dominate: 2 frames through a 2-member reward cnn took 125 ms with 2 threads and 1.2 ms with 1,
    and one state against 10,000 (PEBBLE's kNN) 12 ms vs 1.2 ms, on this project's shared 2-core
    machine. Larger batches keep torch's thread count.
    """
    import torch

    threads = torch.get_num_threads()
    if items > SMALL_BATCH or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
