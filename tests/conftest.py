"""Suite-wide settings.

The publisher (FastAPI, uvicorn, httpx) is CPython-only by design: on PyPy its
tests are not collected at all (its dependencies are not installed there).
"""
import platform

collect_ignore = []
if platform.python_implementation() != "CPython":
    collect_ignore.append("publisher")
