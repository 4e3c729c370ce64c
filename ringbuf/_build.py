"""cffi out-of-line (API mode) build of ringbuf._ringbuf_cffi.

Run by setuptools at install (``cffi_modules`` in pyproject.toml) for whichever
interpreter installs the package.  The record structs come from
``ringbuf/records.py`` so C and numpy share one definition.
"""
import os
import sys

from cffi import FFI

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
import records  # noqa: E402  (records.py imports nothing but the stdlib)
sys.path.pop(0)

ffi = FFI()
with open(os.path.join(_here, "_c", "ringbuf.h")) as f:
    header = "".join(line for line in f if not line.startswith("#"))
ffi.cdef(header.replace("/*", "\n/*"))
ffi.cdef(records.COMMAND_CDEF)
ffi.cdef(records.EVENT_CDEF)
ffi.set_source(
    "ringbuf._ringbuf_cffi",
    '#include "ringbuf.h"\n' + records.COMMAND_CDEF + "\n" + records.EVENT_CDEF + "\n"
    "_Static_assert(sizeof(rm_command_t) == %d, \"command size\");\n"
    "_Static_assert(sizeof(rm_event_t) == %d, \"event size\");\n"
    % (records.COMMAND_SIZE, records.EVENT_SIZE),
    sources=[os.path.join("ringbuf", "_c", "ringbuf.c")],
    include_dirs=[os.path.join(_here, "_c")],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
