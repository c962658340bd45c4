"""Docstrings that carry a text signature, for the engine's built-in functions and methods.

A built-in function or method descriptor has no ``__signature__`` or ``__wrapped__`` to set:
:func:`inspect.signature` reads its signature from the first lines of its docstring
(``__text_signature__``: ``name(params)``, then ``--`` and a blank line), which CPython
strips from ``__doc__``. Annotations cannot be written there; the Python function the
built-in stands for keeps them (and type checkers read the source).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def doc_with_text_signature(function: Callable[..., Any], *, method: bool = False) -> bytes:
    """``function``'s docstring (UTF-8) with its signature first, annotations dropped: for a
    built-in function, or (``method``: the first parameter is the object) a method
    descriptor, whose first parameter is then written ``$self`` and positional-only. A first
    line that is the signature Cython embeds in a docstring (``Region.close(self, ...)``)
    is dropped.

    Examples
    --------
    >>> from mmarray._textsig import doc_with_text_signature
    >>> def scale(x: float, factor: float = 2.0) -> float:
    ...     "Scale x."
    ...     return x * factor
    >>> doc_with_text_signature(scale)
    b'scale(x, factor=2.0)\\n--\\n\\nScale x.'
    """
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    text = str(signature.replace(parameters=parameters, return_annotation=signature.empty))
    if method:
        rest = str(signature.replace(parameters=parameters[1:],
                                     return_annotation=signature.empty))[1:]
        text = "($self, /" + (", " + rest if rest != ")" else ")")
    doc = function.__doc__ or ""
    first, _, rest = doc.partition("\n\n")
    if first.startswith(function.__qualname__ + "(") and "\n" not in first:
        doc = rest                   # the signature Cython embeds (embedsignature): replaced
    return f"{function.__name__}{text}\n--\n\n{doc}".encode()
