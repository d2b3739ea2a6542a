"""Helpers shared by the tests that launch DeepSpeed ranks as separate processes."""
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def free_port() -> int:
    """A TCP port free on the loopback interface now (concurrent launches need distinct ones)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
