"""The one change the SIMT simulator makes to a ``.cu`` file before compiling it.

A whole-line static shared declaration ``__shared__ T name[dims];`` becomes
``auto& name = ::simt::shared_variable<T[dims]>([] {});``: a reference into
the running block's shared memory (simt_host.h), which the runtime fills with
NaN bytes before every block, as the hardware gives each block its own
uninitialised copy. Lines keep their numbers, and a ``#line`` directive keeps
the compiler's messages pointing at the original file. A declaration of any
other form is refused here by name; one that is not at the start of a line
meets simt_host.h's ``__shared__``, which stops the compilation.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"^(?P<indent>\s*)__shared__\s+(?P<decl>[^;]*);(?P<rest>.*)$")
_DECL = re.compile(r"^(?P<type>.*?\S)\s+(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\[\]]+\]\s*)*)$")


def rewrite(text: str, path: str) -> str:
    """``text`` (the source of ``path``) with its static shared declarations rewritten.

    Parameters
    ----------
    text : str
        The source of a ``.cu`` file.
    path : str
        Its path, for the ``#line`` directive and error messages.

    Returns
    -------
    str
        The source to compile for the simulator; as many lines as ``text``
        plus the leading ``#line``.

    Raises
    ------
    ValueError
        A ``__shared__`` declaration with several names, an initialiser or a
        type this cannot separate from its name.
    """
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(text.split("\n"), 1):
        m = _LINE.match(line)
        if m is None:
            out.append(line)
            continue
        decl = _DECL.match(m["decl"].strip())
        if decl is None or "," in decl["type"].replace(" ", "").split("<")[0] or "=" in m["decl"]:
            raise ValueError(f"{path}:{number}: the simulator rewrites only '__shared__ T name[dims];', "
                             f"one name and no initialiser; got {line.strip()!r}")
        dims = re.sub(r"\s+", "", decl["dims"])
        out.append(f"{m['indent']}auto& {decl['name']} = ::simt::shared_variable<{decl['type']}{dims}>([] {{}});"
                   f"{m['rest']}")
    return "\n".join(out)
