"""Helpers shared by the tests that launch DeepSpeed ranks as separate processes."""
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def free_port() -> int:
    """A TCP port free on the loopback interface now (concurrent launches need distinct ones)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every process of a launched job inherits this variable, so a test finds even re-parented ones.
MARK = "RSFM_TEST_JOB"


def job_processes(mark: str) -> Dict[int, str]:
    """pid -> command line of every live process whose environment carries ``MARK=mark``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{MARK}={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or a zombie
            continue
    return {pid: cmd for pid, cmd in found.items() if process_state(pid) not in (None, "Z")}


def process_state(pid: int) -> Optional[str]:
    """The state letter of ``pid`` (R, S, T, Z, ...) from /proc; None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()
