"""A crash-simulation shim for ``journaler.fsio`` (in the spirit of SQLite's crash VFS / LazyFS).

Theory of operation:

1. ``CrashSim(root, seed, crash_after=N)`` installed with ``install()`` takes
   over every ``journaler.fsio`` function for paths under ``root`` (others
   pass through).  Each call is one *I/O operation*; the real operation is
   performed (except fsyncs: durability is the shim's model, the real disk
   is not asked to flush), and the shim records what a power loss could
   still undo:
   per file, every write / truncate since the last completed ``fsync`` /
   ``fdatasync`` of that file; per directory, every entry change (create,
   rename, unlink) since the last ``fsync_dir`` of that directory (a rename
   between two directories waits for both).  A file's ``fsync`` does not
   make its directory entry durable (POSIX; ext4 and XFS may do more).
2. Crash point: when ``N`` operations have been performed, the next one
   raises ``PowerLoss`` (a BaseException, so no ``except OSError`` or
   ``except Exception`` of the code under test swallows it) and so does every
   later one: the process is dead.  ``crash_now()`` is the same at any time.
3. ``power_loss()`` then rewrites the real files under ``root`` as a machine
   that lost power could find them:
   a. Directory changes not covered by a directory fsync: a seeded prefix of
      them (in the order they were made, as a journaling file system commits
      metadata) is kept, the rest are undone (a created file disappears, a
      renamed one gets its old name back and the displaced file returns, an
      unlinked one comes back).
   b. File data not covered by a completed fsync, per file: ``writeback``
      ``"ordered"`` keeps a seeded prefix of the file's unsynced writes
      intact (pages written back in order), ``"none"`` keeps none; of the
      rest, per file one seeded ``tear``: ``drop`` (gone), ``prefix`` (a
      random proper prefix of the first of them persisted), ``garbage`` or
      ``zeros`` (their byte ranges hold random bytes / zeros: the size
      reached the disk, the data did not).  ``"scattered"`` decides each
      unsynced write independently (kept, dropped or torn): out-of-order
      writeback, which can leave intact blocks after a hole.  ``"pages"`` is
      out-of-order writeback as a page cache does it: the file's unsynced
      writes are applied to its cached image, and each dirty page
      (``page_size`` bytes; at least the page of every unsynced write) reaches
      the disk or not, independently, with a seeded per-file probability; a
      page that did not keeps what the disk had (its durable bytes; zeros past
      the durable size: a hole).  The size after the crash is either the
      cached size (the metadata was committed) or the durable size extended
      only to the last page written back.  Synced bytes survive (unless an
      unsynced truncate that reached the disk removed them).
   Open descriptors are closed and the shim uninstalls itself.
4. Faults to prove a checker can fail: ``fsync_lies=True`` makes file
   fsyncs return without making anything durable (a disk that lies).
5. The model of a file is its content at the first operation that touched
   it (assumed durable: everything before ``install`` was synced, e.g. by a
   previous ``power_loss``) plus the recorded operations.  Directories are
   assumed to exist durably.
"""
import os
import random
import stat

from journaler import fsio

__all__ = ["PowerLoss", "CrashSim"]

TEARS = ("drop", "prefix", "garbage", "zeros")
WRITEBACKS = ("ordered", "none", "scattered", "pages")
#: out-of-order writeback variants (rule 3b): they can leave intact blocks after a hole
OUT_OF_ORDER = ("scattered", "pages")


class PowerLoss(BaseException):
    """The simulated machine lost power (rule 2)."""


class _File(object):
    """A file's durable content and the operations since its last completed fsync."""

    __slots__ = ("durable", "pending", "path")

    def __init__(self, path, content):
        self.path = path
        self.durable = bytearray(content)
        self.pending = []       # ("w", offset, bytes) / ("t", size)

    def sync(self):
        for op in self.pending:
            _apply(self.durable, op)
        self.pending = []


class _DirOp(object):
    __slots__ = ("kind", "dirs", "path", "target", "file", "displaced")

    def __init__(self, kind, dirs, path, file, target=None, displaced=None):
        self.kind = kind            # "create" | "rename" | "unlink"
        self.dirs = set(dirs)       # directories whose fsync it still waits for
        self.path = path
        self.target = target
        self.file = file
        self.displaced = displaced


def _apply(content, op):
    if op[0] == "w":
        _, offset, data = op
        if not data:                # a dropped write, or an empty prefix of one
            return
        if offset > len(content):
            content.extend(b"\0" * (offset - len(content)))
        content[offset:offset + len(data)] = data
    else:
        size = op[1]
        if size < len(content):
            del content[size:]
        else:
            content.extend(b"\0" * (size - len(content)))


class CrashSim(object):
    """Records unsynced writes under ``root`` and loses them at a crash point (module doc)."""

    def __init__(self, root, seed, crash_after=None, writeback="ordered", tears=TEARS,
                 fsync_lies=False, page_size=4096):
        if writeback not in WRITEBACKS:
            raise ValueError("writeback must be one of %s" % (WRITEBACKS,))
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.page_size = page_size
        self.root = os.path.abspath(root) + os.sep
        self.rng = random.Random(seed)
        self.crash_after = crash_after
        self.writeback = writeback
        self.tears = tuple(tears)
        self.fsync_lies = fsync_lies
        self.ops = 0
        self.crashed = False
        self.files = {}         # path -> _File: the current namespace of tracked files
        self.fds = {}           # fd -> _File (None: a directory)
        self.fd_flags = {}
        self.dir_ops = []       # pending _DirOp, in order
        self.touched = set()    # every path a tracked file ever had
        self.report = {}        # what power_loss did (for failure messages and statistics)

    # -- installation --------------------------------------------------------
    def install(self):
        fsio.install({
            "open": self.open, "close": self.close, "write": self.write,
            "writev": self.writev, "pwrite": self.pwrite, "ftruncate": self.ftruncate,
            "fsync": self.fsync, "fdatasync": self.fsync, "fsync_dir": self.fsync_dir,
            "rename": self.rename, "replace": self.replace, "unlink": self.unlink,
        })
        return self

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        fsio.uninstall()

    # -- bookkeeping ---------------------------------------------------------
    def _mine(self, path):
        path = os.path.abspath(path)
        return path.startswith(self.root) or path + os.sep == self.root

    def _step(self):
        """Count one operation; raise PowerLoss at the crash point (rule 2)."""
        if self.crashed:
            raise PowerLoss("the machine is off")
        if self.crash_after is not None and self.ops >= self.crash_after:
            self.crashed = True
            raise PowerLoss("power lost after %d I/O operations" % self.ops)
        self.ops += 1

    def crash_now(self):
        self.crashed = True

    def _file(self, path):
        """The tracked file at ``path`` (tracking it now if it exists untracked), or None."""
        path = os.path.abspath(path)
        f = self.files.get(path)
        if f is None and os.path.isfile(path):
            with open(path, "rb") as fh:
                f = _File(path, fh.read())
            self.files[path] = f
            self.touched.add(path)
        return f

    def _offset(self, fd):
        if self.fd_flags.get(fd, 0) & os.O_APPEND:
            return os.fstat(fd).st_size
        return os.lseek(fd, 0, os.SEEK_CUR)

    # -- the fsio functions --------------------------------------------------
    def open(self, path, flags, mode=0o777):
        if not self._mine(path):
            return os.open(path, flags, mode)
        self._step()
        path = os.path.abspath(path)
        if os.path.isdir(path):
            fd = os.open(path, flags, mode)
            self.fds[fd] = None
            return fd
        existing = self._file(path)
        fd = os.open(path, flags, mode)
        self.fd_flags[fd] = flags
        if existing is None:
            f = _File(path, b"")
            self.files[path] = f
            self.touched.add(path)
            self.dir_ops.append(_DirOp("create", [os.path.dirname(path)], path, f))
        else:
            f = existing
            if flags & os.O_TRUNC:
                f.pending.append(("t", 0))
        self.fds[fd] = f
        return fd

    def close(self, fd):
        if fd not in self.fds:
            return os.close(fd)
        self._step()
        del self.fds[fd]
        self.fd_flags.pop(fd, None)
        os.close(fd)

    def _record_write(self, fd, data, offset, n):
        if n > 0:
            self.fds[fd].pending.append(("w", offset, bytes(data[:n])))

    def write(self, fd, data):
        if fd not in self.fds:
            return os.write(fd, data)
        self._step()
        offset = self._offset(fd)
        n = os.write(fd, data)
        self._record_write(fd, memoryview(data).cast("B"), offset, n)
        return n

    def writev(self, fd, parts):
        if fd not in self.fds:
            return fsio._PASS["writev"](fd, parts)
        self._step()
        data = b"".join(bytes(p) for p in parts)
        offset = self._offset(fd)
        n = os.write(fd, data)
        self._record_write(fd, data, offset, n)
        return n

    def pwrite(self, fd, data, offset):
        if fd not in self.fds:
            return os.pwrite(fd, data, offset)
        self._step()
        n = os.pwrite(fd, data, offset)
        self._record_write(fd, memoryview(data).cast("B"), offset, n)
        return n

    def ftruncate(self, fd, size):
        if fd not in self.fds:
            return os.ftruncate(fd, size)
        self._step()
        os.ftruncate(fd, size)
        self.fds[fd].pending.append(("t", size))

    def fsync(self, fd):
        if fd not in self.fds:
            return os.fsync(fd)
        self._step()
        f = self.fds[fd]                    # no real fsync: durability is the model's (rule 1)
        if f is None:                       # an fsync of a directory descriptor
            return self._dir_synced(os.readlink("/proc/self/fd/%d" % fd))
        if not self.fsync_lies:             # rule 4
            f.sync()

    def fsync_dir(self, path):
        if not self._mine(path):
            return fsio._PASS["fsync_dir"](path)
        self._step()
        self._dir_synced(path)

    def _dir_synced(self, path):
        path = os.path.abspath(path)
        for op in self.dir_ops:
            op.dirs.discard(path)
        self.dir_ops = [op for op in self.dir_ops if op.dirs]

    def rename(self, src, dst):
        return self._rename(src, dst, os.rename)

    def replace(self, src, dst):
        return self._rename(src, dst, os.replace)

    def _rename(self, src, dst, real):
        if not (self._mine(src) and self._mine(dst)):
            return real(src, dst)
        self._step()
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        f = self._file(src)
        displaced = self._file(dst)
        real(src, dst)
        if f is None:                       # not a regular file (never ours)
            return
        del self.files[src]
        self.files[dst] = f
        self.touched.add(dst)
        self.dir_ops.append(_DirOp("rename", {os.path.dirname(src), os.path.dirname(dst)},
                                   src, f, target=dst, displaced=displaced))

    def unlink(self, path):
        if not self._mine(path):
            return os.unlink(path)
        self._step()
        path = os.path.abspath(path)
        f = self._file(path)
        os.unlink(path)
        if f is not None:
            del self.files[path]
            self.dir_ops.append(_DirOp("unlink", [os.path.dirname(path)], path, f))

    # -- the power loss (rule 3) ---------------------------------------------
    def unsynced(self):
        """(pending data operations, pending directory operations) right now."""
        return sum(len(f.pending) for f in self.files.values()), len(self.dir_ops)

    def power_loss(self):
        """Rewrite the files under ``root`` as a machine that lost power finds them."""
        self.crashed = True
        rng = self.rng
        for fd in list(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        fsio.uninstall()
        # a. directory entries
        names = dict(self.files)
        keep = rng.randint(0, len(self.dir_ops))
        undone = self.dir_ops[keep:]
        for op in reversed(undone):
            if op.kind == "create":
                names.pop(op.path, None)
            elif op.kind == "unlink":
                names[op.path] = op.file
            else:
                names[op.path] = op.file
                if op.displaced is not None:
                    names[op.target] = op.displaced
                else:
                    names.pop(op.target, None)
        # b. file data
        torn = {}
        for path in sorted(names):
            f = names[path]
            content, how = self._lose(f)
            torn[path] = how
            with open(path, "wb") as fh:
                fh.write(content)
        for path in sorted(self.touched - set(names)):
            if os.path.lexists(path) and stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
        self.report = {"dir_ops_kept": keep, "dir_ops_undone": [(op.kind, op.path) for op in undone],
                       "files": torn}
        return self.report

    def _lose(self, f):
        """(content after the power loss, what happened) of one file (rule 3b)."""
        rng = self.rng
        content = bytearray(f.durable)
        ops = f.pending
        if not ops:
            return content, "synced"
        if self.writeback == "pages":
            return self._lose_pages(f)
        if self.writeback == "scattered":
            for op in ops:
                how = rng.choice(("keep",) + self.tears)
                if how == "keep":
                    _apply(content, op)
                elif op[0] == "w":
                    _apply(content, self._torn(op, how))
            return content, "scattered(%d)" % len(ops)
        kept = rng.randint(0, len(ops)) if self.writeback == "ordered" else 0
        for op in ops[:kept]:
            _apply(content, op)
        rest = [op for op in ops[kept:] if op[0] == "w"]
        if not rest:
            return content, "kept %d/%d" % (kept, len(ops))
        how = rng.choice(self.tears)
        if how == "prefix":
            _apply(content, self._torn(rest[0], how))
        elif how != "drop":
            for op in rest:
                _apply(content, self._torn(op, how))
        return content, "kept %d/%d, %s %d" % (kept, len(ops), how, len(rest))

    def _lose_pages(self, f):
        """Rule 3b ``"pages"``: each dirty page of the cached image written back or not."""
        rng = self.rng
        page = self.page_size
        durable = bytes(f.durable)
        cache = bytearray(durable)
        dirty = set()
        for op in f.pending:
            _apply(cache, op)
            if op[0] == "w" and op[2]:
                lo, hi = op[1], op[1] + len(op[2])
                dirty.update(range(lo // page, (hi - 1) // page + 1))
        p_kept = rng.random()
        kept = sorted(p for p in sorted(dirty) if rng.random() < p_kept)
        kept_end = min(len(cache), (kept[-1] + 1) * page) if kept else 0
        size = rng.choice((len(cache), max(len(durable), kept_end)))
        content = bytearray(durable[:size])
        content.extend(b"\0" * (size - len(content)))
        for p in kept:
            lo, hi = p * page, min((p + 1) * page, len(cache), size)
            if lo < hi:
                content[lo:hi] = cache[lo:hi]
        return content, "pages(%d: %d/%d written back, size %d of %d cached)" % (
            page, len(kept), len(dirty), size, len(cache))

    def _torn(self, op, how):
        _, offset, data = op
        if how == "drop":
            return ("w", offset, b"")
        if how == "prefix":
            return ("w", offset, data[:self.rng.randrange(len(data))])
        if how == "zeros":
            return ("w", offset, b"\0" * len(data))
        return ("w", offset, self.rng.getrandbits(8 * len(data)).to_bytes(len(data), "little"))
