"""free_port() (tests/fixtures/programs.py) hands out ports nobody else can be given."""

from __future__ import annotations

import socket

from tests.fixtures.programs import _ephemeral_low, free_port


def test_a_port_is_never_handed_out_twice_nor_by_the_kernel() -> None:
    """The old free_port bound port 0 and closed it: the kernel could give the same port
    to the next bind(0) (another fixture, another test process) before the program under
    test bound it. Now ports come from outside the kernel's range and stay reserved."""
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(p < _ephemeral_low() for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] not in ports


def test_the_port_is_free_to_bind() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
