"""How large an input hbm accepts: every limit in one place (docs/reference.md, "Limits").

Each is checked before the work it bounds, so that an absurd input is refused in well under a
second with a message naming the limit, rather than ending in a RecursionError, a MemoryError or a
hang. The limits sit far above anything a real model needs; what each one protects is said beside it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from hbm.errors import HbmError

# Formulas (and the call text of priors and optimizers), counted on the raw text before lark parses it.
# The parser, the resolver and str() of the AST recurse once per level of nesting and once per
# operator of a sum (a + b + c nests to the left), at about three Python frames a level, against
# Python's limit of 1,000 frames: 50 + 150 levels leave room for the caller's own frames.
MAX_NESTING = 50            # parentheses (and brackets) inside one another
MAX_TERMS = 150             # operators (+ - * / : | ^ and commas): a formula of at most 151 terms
MAX_FORMULA_CHARS = 20_000  # characters of a formula, a prior or an optimizer
MAX_EXPANDED_TERMS = 2_000  # population terms after expanding products: a*b*c*... doubles with each factor

# YAML specs, counted while the file is composed (hbm/spec.py)
MAX_YAML_DEPTH = 50         # mappings and lists inside one another
MAX_YAML_NODES = 100_000    # values, counting each use of an alias in full (an alias bomb expands to billions)
MAX_SPEC_BYTES = 10_000_000  # a spec file larger than this is not a spec

# Data
MAX_DESIGN_BYTES = 2**31    # a dense design (rows x design columns x 4 bytes, float32) above 2 GiB is refused:
                            # a factor with many levels belongs in a group term, (1 | g), not in factor(g)
MANY_LEVELS = 100           # a factor with more levels than this gets the (1 | g) hint


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a regular file (symbolic links followed); an HbmError naming ``what``
    (``"data"``, ``"spec"``) for a FIFO, a device, a socket or a directory, which would hang a reader
    or never end (``/dev/zero``). A missing path is the caller's to report."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise HbmError(f"cannot read {what} file {p}: {e.strerror or e}", where=what) from None
    if stat.S_ISREG(st.st_mode):
        return p
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise HbmError(f"{what} path {p} is {kind}, not a regular file", where=what,
                   hint=f"give the path of a {what} file on disk; to read from a pipe, save it to a file first")
