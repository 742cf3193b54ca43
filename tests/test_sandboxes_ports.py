"""The host port allocator: never a port that we or anybody else holds; released ports return."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from anycode_actors.sandboxes import SandboxError
from anycode_actors.sandboxes.ports import PortAllocator, free_ephemeral_port, port_is_free


def free_block(size: int) -> int:
    """The start of `size` consecutive ports that are free on 127.0.0.1 right now."""
    for _ in range(200):
        start = free_ephemeral_port()
        if start + size < 65536 and all(port_is_free(p) for p in range(start, start + size)):
            return start
    raise AssertionError(f"no {size} consecutive free ports found")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Another program's server on a loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server


def test_allocated_ports_are_distinct_until_released() -> None:
    start = free_block(5)
    ports = PortAllocator(start, start + 5)
    taken = [ports.allocate() for _ in range(5)]
    assert sorted(taken) == list(range(start, start + 5))
    assert ports.held == set(taken)
    ports.release(taken[2])
    assert ports.allocate() == taken[2]


def test_a_port_someone_else_listens_on_is_never_handed_out(listener: socket.socket) -> None:
    busy = listener.getsockname()[1]
    ports = PortAllocator(busy, busy + 1)
    assert not port_is_free(busy)
    with pytest.raises(SandboxError):
        ports.allocate()


def test_a_port_bound_on_all_interfaces_counts_as_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("0.0.0.0", 0))
        other.listen()
        assert not port_is_free(other.getsockname()[1])


def test_busy_ports_are_skipped(listener: socket.socket) -> None:
    busy = listener.getsockname()[1]
    ports = PortAllocator(busy, busy + 2)
    if not port_is_free(busy + 1):
        pytest.skip(f"port {busy + 1} happens to be in use")
    assert ports.allocate() == busy + 1


def test_exhaustion_says_what_to_do() -> None:
    start = free_block(2)
    ports = PortAllocator(start, start + 2)
    ports.allocate()
    ports.allocate()
    with pytest.raises(SandboxError) as caught:
        ports.allocate()
    message = str(caught.value)
    assert message.startswith(f"no free port in {start}–{start + 2}: 2 held by this daemon")
    assert "widen docker.port_range_*" in message


def test_a_released_port_is_the_last_to_come_back() -> None:
    start = free_block(3)
    ports = PortAllocator(start, start + 3)
    first = ports.allocate()
    ports.release(first)
    # The scan continues after the last port handed out instead of reusing `first` at once.
    assert ports.allocate() == start + 1
    assert ports.allocate() == start + 2
    assert ports.allocate() == first


def test_adopted_ports_are_held_and_outside_ports_are_ignored() -> None:
    start = free_block(2)
    ports = PortAllocator(start, start + 2)
    ports.adopt(start)
    ports.adopt(start + 50)
    ports.release(start + 60)
    assert ports.held == {start}
    assert ports.allocate() == start + 1


def test_a_range_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        PortAllocator(12000, 12000)
