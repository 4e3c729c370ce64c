"""Experiment only (not part of ringmatch): on PyPy, Producer.write_batch copies with
ffi.memmove instead of slice-assigning from the (read-only) source memoryview, which PyPy
copies byte by byte (~19 us per 128-byte event measured).  Loaded through PYTHONPATH."""
import platform
if platform.python_implementation() == "PyPy":
    try:
        import ringbuf.ring as _ring
        from ringbuf._native import ffi as _ffi

        def write_batch(self, data, max_chunk=None, expect_first=None):
            size = self._record_size
            total = len(data) // size
            src = _ffi.from_buffer(data)
            chunk = max_chunk or max(1, self._capacity // 4)
            done, first_seq = 0, None
            while done < total:
                n = min(total - done, chunk)
                first, views = self.claim_batch(n)
                if expect_first is not None and first != expect_first + done:
                    raise _ring.RingError("unexpected sequence")
                if first_seq is None:
                    first_seq = first
                slot = first & self._mask
                k = min(n, self._capacity - slot)
                _ffi.memmove(self._data + slot * size, src + done * size, k * size)
                if k < n:
                    _ffi.memmove(self._data, src + (done + k) * size, (n - k) * size)
                if self._stamp:
                    self._stamp_views(views)
                self._publish(first, first + n - 1)
                done += n
            return first_seq
        _ring.Producer.write_batch = write_batch
    except Exception:
        pass
