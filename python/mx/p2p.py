"""P2P transfer: a worker that serves a model as a source of its weights, and a target
that receives them. The P2P transfer engine is not part of this build yet: ``available()``
is False, ``publish_source`` reports that it did not publish, and the loader chain's p2p
step is reported as skipped. When the engine lands, these call into it (mx._mx)."""

from __future__ import annotations

from typing import Any, Iterable, Tuple

from . import _mx


def available() -> bool:
    """True when this build has the P2P transfer engine."""
    return _mx.p2p_available()


def publish_source(model: str, tensors: Iterable[Tuple[str, Any]]) -> Tuple[bool, str]:
    """Offers ``tensors`` (name, tensor) of ``model`` to other workers. Returns
    (published, reason)."""
    if not available():
        return False, "this build has no P2P transfer engine"
    raise NotImplementedError("P2P engine present but not wired into the Python package")


def receive(model: str) -> Iterable[Tuple[str, Any]]:
    """Receives ``model``'s tensors from a source worker (the target side)."""
    raise NotImplementedError("this build has no P2P transfer engine; use mx.load, whose "
                              "chain tries P2P first once the engine exists")
