"""ringbuf: the shared-memory disruptor ring of ringmatch (see docs/ring.md).

>>> from ringbuf import Ring
"""
from .errors import (RingClosedError, RingConfigError, RingError, RingExistsError,  # noqa: F401
                     RingMismatchError, RingNotFoundError, RingOSError)
from .ring import Batch, Consumer, Producer, Ring, RingSpec  # noqa: F401
from .wait_strategy import (BackoffWaitStrategy, BlockingWaitStrategy,  # noqa: F401
                            BusySpinWaitStrategy, TimeoutBlockingWaitStrategy,
                            YieldingWaitStrategy)

__all__ = ["Ring", "RingSpec", "Producer", "Consumer", "Batch", "RingError", "RingMismatchError",
           "RingExistsError", "RingNotFoundError", "RingClosedError", "RingConfigError",
           "RingOSError", "BusySpinWaitStrategy", "YieldingWaitStrategy", "BlockingWaitStrategy",
           "TimeoutBlockingWaitStrategy", "BackoffWaitStrategy"]
