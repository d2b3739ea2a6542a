"""Two "hosts" on one machine: two network namespaces joined by a veth pair.

Each host is a network namespace with its own loopback, one end of a veth pair with an address
that exists only inside it (``10.77.0.1/24`` and ``10.77.0.2/24``), and its own hosts file naming
both hosts (``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts`` over ``/etc/hosts``). Commands
run through :meth:`Host.argv` also get their own UTS namespace with the host's name as hostname,
so ``socket.gethostname()``, gloo's choice of interface (it binds to the address the hostname
resolves to) and the master address resolve as they do on a cluster node.

On exit, even after a failure, every process inside the namespaces is killed and waited for, and
the namespaces, the veth pair and ``/etc/netns/<ns>`` are removed: nothing is left behind.

Needs root and iproute2's ``ip`` (and util-linux's ``unshare``); :func:`unavailable` says why not.

Run directly to hold the bed up around a command (the command runs in the root namespace, with
``RSFM_HOSTS="name:netns:addr name:netns:addr"`` in its environment)::

    sudo python tests/netns.py -- bash launch/slurm/testbed.sh run --nodes 2 -- CMD...
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

NETNS_ETC = Path("/etc/netns")
SUBNET = "10.77.0"


@dataclass(frozen=True)
class Host:
    """One end of the bed.

    Attributes:
        name: the host's name (its hostname inside :meth:`argv`, and its line in both hosts files).
        netns: the network namespace's name (unique per bed).
        addr: its IPv4 address on the veth, without the prefix length.
        veth: its end of the veth pair.
    """

    name: str
    netns: str
    addr: str
    veth: str

    def argv(self, cmd: Sequence[str]) -> List[str]:
        """``cmd`` run on this host: inside its network namespace, with its hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *map(str, cmd)]

    def pids(self) -> List[int]:
        """Every live process inside this host's network namespace."""
        proc = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def unavailable() -> str:
    """Why the bed cannot be built here, or '' when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [tool for tool in ("ip", "unshare") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} missing (iproute2, util-linux)"
    return ""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _kill_all(hosts: Sequence[Host], grace_s: float = 5.0) -> None:
    """SIGTERM then, after ``grace_s``, SIGKILL to every process in the namespaces; returns once
    none is left (zombies count as gone: their parent reaps them)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        pids = [p for h in hosts for p in h.pids()]
        for pid in pids:
            for s in (sig, signal.SIGCONT):    # a stopped process must run to die of SIGTERM
                try:
                    os.kill(pid, s)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + wait_s
        while time.monotonic() < end and any(alive(p) for h in hosts for p in h.pids()):
            time.sleep(0.1)
        if not any(alive(p) for h in hosts for p in h.pids()):
            return


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _teardown(hosts: Sequence[Host]) -> None:
    _kill_all(hosts)
    for h in hosts:
        subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)  # takes its veth end along
        shutil.rmtree(NETNS_ETC / h.netns, ignore_errors=True)
    # The veth pair goes with the namespace that holds it; this catches a failure before the move.
    for h in hosts:
        subprocess.run(["ip", "link", "del", h.veth], capture_output=True)
    try:
        NETNS_ETC.rmdir()  # only when empty: another bed (or the system) may use it
    except OSError:
        pass


@contextmanager
def two_hosts(names: Tuple[str, str] = ("hosta", "hostb")) -> Iterator[Tuple[Host, Host]]:
    """Build the bed; yields ``(host_a, host_b)``; tears it down on exit (module docstring)."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"two-host bed unavailable: {reason}")
    tag = uuid.uuid4().hex[:6]
    hosts = tuple(Host(name, f"rsfm-{tag}-{i}", f"{SUBNET}.{i + 1}", f"rv{tag}{i}") for i, name in enumerate(names))
    hosts_file = "".join(["127.0.0.1 localhost\n"] + [f"{h.addr} {h.name}\n" for h in hosts])
    try:
        for h in hosts:
            _ip("netns", "add", h.netns)
            (NETNS_ETC / h.netns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / h.netns / "hosts").write_text(hosts_file)
        a, b = hosts
        _ip("link", "add", a.veth, "type", "veth", "peer", "name", b.veth)
        for h in hosts:
            _ip("link", "set", h.veth, "netns", h.netns)
            _ip("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", h.veth)
            _ip("-n", h.netns, "link", "set", h.veth, "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
        yield hosts  # type: ignore[misc]
    finally:
        _teardown(hosts)


def leftovers(hosts: Sequence[Host]) -> List[str]:
    """What of these hosts still exists: namespaces, veths, /etc/netns entries ([] when clean)."""
    found = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for h in hosts:
        if h.netns in listed.split():
            found.append(f"netns {h.netns}")
        if f" {h.veth}@" in links or f" {h.veth}:" in links:
            found.append(f"link {h.veth}")
        if (NETNS_ETC / h.netns).exists():
            found.append(str(NETNS_ETC / h.netns))
    return found


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python tests/netns.py -- CMD [ARGS...]", file=sys.stderr)
        return 2
    reason = unavailable()
    if reason:
        print(f"netns: {reason}", file=sys.stderr)
        return 2
    with two_hosts() as hosts:
        env = {**os.environ, "RSFM_HOSTS": " ".join(f"{h.name}:{h.netns}:{h.addr}" for h in hosts)}
        print(f"netns: {env['RSFM_HOSTS']}", file=sys.stderr)
        return subprocess.run(args, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
