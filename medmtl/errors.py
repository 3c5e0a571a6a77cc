"""Errors that the command line turns into one line (``error: ...``) and an exit status, instead
of a traceback: bad input (a data set, a checkpoint, an option) and a run that had to stop.

`MedmtlError.exit_code` is what ``medmtl`` exits with: 2 for input the user can fix (the usual
status of a bad command line), 1 for a run that failed on its own (a non-finite loss).
"""

from __future__ import annotations

MAX_ECHO = 80  # characters of user-supplied text echoed in one message


class MedmtlError(Exception):
    """A failure with a message fit to show as it is (it names the file, and line where there
    is one)."""

    exit_code = 2


class RunLocked(MedmtlError):
    """Another process holds the run folder."""


class CheckpointError(MedmtlError, ValueError):
    """A checkpoint that cannot be used: unreadable, corrupted, or not fitting the model."""


class InputError(MedmtlError, ValueError):
    """A value given by the user (an option, a file) outside what medmtl accepts."""


class PluginError(MedmtlError, ImportError):
    """An installed method plug-in (the `medmtl.plugins` entry-point group) that fails to import."""


class NonFiniteError(MedmtlError):
    """Training or inference produced NaN/inf values."""

    exit_code = 1


def clip_text(text: object, limit: int = MAX_ECHO) -> str:
    """``repr``-free shortening of user text for messages: at most ``limit`` characters, with
    the number left out (a 5 MB token is never echoed whole)."""
    s = str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}... ({len(s) - limit} more characters)"


# PyTorch's advice in a refused load (re-run with weights_only=False, allow-list the class): both
# would let the file run code, so medmtl never repeats them
_UNSAFE_ADVICE = ("weights_only", "weights only load failed", "trusted source", "safe_globals",
                  "arbitrary code", "check the documentation", "allowlist", "if you trust")


def load_refusal(e: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in one sentence, without PyTorch's
    advice to load it with ``weights_only=False`` or to allow-list its classes (the first
    sentence that is not advice, e.g. "Trying to load unsupported GLOBAL posix.system ...")."""
    import re

    sentences = re.split(r"(?<=[.!?])\s+|\n+", str(e).strip())
    keep = [t.strip() for t in sentences
            if t.strip() and not any(a in t.lower() for a in _UNSAFE_ADVICE)]
    return clip_text(keep[0].rstrip("."), 200) if keep else type(e).__name__


UNSAFE_FIX = ("re-export the weights as tensors (a state dict or safetensors) or retrain with "
              "this medmtl version; never unpickle an untrusted file")

__all__ = ["UNSAFE_FIX", "CheckpointError", "InputError", "MedmtlError", "NonFiniteError",
           "RunLocked", "clip_text", "load_refusal"]
