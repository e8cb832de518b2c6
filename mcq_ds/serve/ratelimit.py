"""Per-client request budgets: a token bucket for each client address, so one client's flood is answered with
429s while everyone else (and the same client a moment later) is served."""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """Each client may make `burst` requests at once and `rate` a second on average. At most `max_clients` buckets
    are kept (the least recently seen go first), so many clients cannot grow the server's memory without bound."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"the request rate must be positive and the burst at least 1 (got {rate}, {burst})")
        self.rate, self.burst, self.max_clients, self._clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client → (tokens, time)

    def take(self, client: str) -> float:
        """0 when `client` may go ahead (one token spent), else the seconds until it may."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait
