"""Shared fixtures of the reliability tests."""
import signal

import pytest


@pytest.fixture
def no_hang(request):
    """Fail a test that blocks (a FIFO read, a walk that never ends) instead of hanging the run.

    The limit in seconds is the ``hang_limit`` marker's argument (default 60)."""
    marker = request.node.get_closest_marker("hang_limit")
    seconds = int(marker.args[0]) if marker else 60

    def boom(*_):
        raise TimeoutError(f"did not finish within {seconds} s: blocked or walking forever?")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
