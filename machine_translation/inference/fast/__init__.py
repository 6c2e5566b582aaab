"""CPU speed machinery behind one call, :func:`prepare`.

What it holds (programs compiled ahead of time by AOTInductor, worker processes)
is its own business: the rest of the toolkit asks for a decoder and gets an object
that decodes batches (``inference.decoders.BatchDecoder``). Only the commands that
decode import it, and only when the user asks for it (``--compiled``); training
never does.
"""

from machine_translation.inference.fast.packages import CompileError
from machine_translation.inference.fast.prepare import prepare

__all__ = ["CompileError", "prepare"]
