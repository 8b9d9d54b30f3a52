"""httpx and httpcore for the served vault's client, loaded without what it does not use.

Both import optional parts when they find them installed: httpcore imports trio (pyfuse3 needs
it, for `mount`) for async backends, httpx its own command line (`httpx._main`: pygments'
lexers, rich's syntax and tables). Every command that reaches a served vault paid for them:
70-80 ms and 6 MiB. They are hidden while the two load; a later import of either works as usual.
"""

from __future__ import annotations

import sys

_UNUSED = ("trio", "httpx._main")

_hidden = [name for name in _UNUSED if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # type: ignore[assignment]  # an import of it raises ImportError
try:
    import httpcore
    import httpx
finally:
    for _name in _hidden:
        del sys.modules[_name]

__all__ = ["httpcore", "httpx"]
