"""Make spconv 2.3.8's CPU backward pass work on a machine without CUDA.

Why: spconv defines ``spconv.pytorch.cppcore.get_current_stream()`` as ``torch.cuda.current_stream().cuda_stream``
and calls it without checking the device in several places, among them the backward of every sparse convolution
(``ops.indice_conv_backward`` and friends). On a machine without CUDA that call initialises CUDA and raises
``RuntimeError: Found no NVIDIA driver on your system`` — the CPU forward works, the CPU backward does not. The CPU
kernels ignore the stream; spconv's own CPU paths (e.g. ``ops.get_indice_pairs``) pass stream 0.

What: :func:`ensure_cpu_backward` replaces the getter with one returning 0 — in ``spconv.pytorch.cppcore`` (its
definition; modules imported later bind the replacement) and in every already imported ``spconv.*`` module that
bound the original by ``from spconv.pytorch.cppcore import get_current_stream`` (in 2.3.8: ``ops``, ``hash``, and,
once imported, ``utils`` and the ``quantization`` modules). Only a name that *is* the original function is replaced,
so it is idempotent and leaves anything else alone. Nothing else changes: the same spconv CPU kernels run.

When: only if ``torch.cuda.is_available()`` is False; with CUDA it does nothing (the real stream matters there).
:class:`~lightning_modules.networks.one2345.sparse_cnn.SparseGeometryNet` calls it at construction.

Remove it when spconv's getter checks the device itself (upstream spconv ≥ a release whose
``cppcore.get_current_stream`` does not call ``torch.cuda`` on a CPU-only machine) — the test
``test_cpu_backward_needs_the_compat_step`` in tests/unit/lightning_modules/test_sparse_cnn.py then fails, which is
the signal.
"""

from __future__ import annotations

import logging
import sys

import torch

log = logging.getLogger(__name__)

_ORIGINAL_GETTER = None  # spconv's own get_current_stream, once found
_LOGGED = False


def _cpu_stream() -> int:
    """The stream spconv's CPU kernels are given: 0 (they ignore it)."""
    return 0


def ensure_cpu_backward() -> list[str]:
    """Without CUDA, point spconv's ``get_current_stream`` at :func:`_cpu_stream` wherever spconv bound it.

    Returns the names of the modules patched by this call (empty with CUDA, or when everything already was).
    """
    global _ORIGINAL_GETTER, _LOGGED
    if torch.cuda.is_available():
        return []
    import spconv.pytorch  # noqa: F401  (loads cppcore, ops, hash: the modules that bind the getter)
    from spconv.pytorch import cppcore

    if _ORIGINAL_GETTER is None:
        if not hasattr(cppcore, "get_current_stream"):
            raise RuntimeError("spconv.pytorch.cppcore has no get_current_stream: this spconv version is not the "
                               "2.3.x the CPU compatibility step (spconv_compat.py) was written for")
        _ORIGINAL_GETTER = cppcore.get_current_stream
        if _ORIGINAL_GETTER is _cpu_stream:  # patched by an earlier copy of this module (e.g. a reload)
            return []
    patched = []
    for name, module in list(sys.modules.items()):
        if (name == "spconv" or name.startswith("spconv.")) and module is not None \
                and getattr(module, "get_current_stream", None) is _ORIGINAL_GETTER:
            setattr(module, "get_current_stream", _cpu_stream)  # a module attribute mypy cannot see
            patched.append(name)
    if patched and not _LOGGED:
        log.debug("no CUDA: spconv's get_current_stream() now returns stream 0 (CPU kernels) in %s",
                  ", ".join(sorted(patched)))
        _LOGGED = True
    return patched
