"""The offline kit's broker healthcheck, against a real tansu broker on 127.0.0.1 (no Docker needed).

docker-compose.yml's `kafka` healthcheck runs `/opt/kafka/bin/kafka-broker-api-versions.sh`; in the kit's tansu
image that path is docker/offline/kafka-healthcheck.sh, a Kafka ApiVersions round trip in bash. It must say
healthy for a broker and unhealthy for a closed port and for a server that speaks something else, or compose
would start the systems against a broker that is not there.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from systems.common.broker import LocalBroker
from systems.common.proc import free_port

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "offline" / "kafka-healthcheck.sh"


def healthcheck(bootstrap: str) -> int:
    proc = subprocess.run(["bash", str(SCRIPT), "--bootstrap-server", bootstrap], capture_output=True, timeout=20)
    return proc.returncode


def test_healthy_for_a_kafka_protocol_broker(broker: LocalBroker) -> None:
    assert healthcheck(broker.bootstrap) == 0


def test_unhealthy_for_a_closed_port() -> None:
    assert healthcheck(f"127.0.0.1:{free_port()}") != 0


@pytest.fixture()
def http_server() -> Iterator[str]:
    """A listener that answers every connection with an HTTP error, as a wrong service on the port would."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)  # accept() wakes up to see `stop`
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}"
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_unhealthy_for_a_server_that_is_not_kafka(http_server: str) -> None:
    assert healthcheck(http_server) != 0
