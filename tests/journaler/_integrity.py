"""Helpers of the integrity tests: a digest of a whole directory tree, one-byte damage."""
import hashlib
import os


def tree_digest(root, exclude=("run",)):
    """{relative path: (mode, size, sha256)} of every file and directory under ``root``.

    ``exclude``: top-level names left out (``run``: lock files, not data).
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [n for n in dirnames if n not in exclude]
            filenames = [n for n in filenames if n not in exclude]
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, digest)
    return out


def flip_byte(path, pos, mask=0x10):
    """XOR one byte of ``path`` at ``pos`` with ``mask``."""
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))
