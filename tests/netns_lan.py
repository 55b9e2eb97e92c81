"""Test hosts that really are separate, on this machine: one network namespace per host, all on one
Ethernet switch (a Linux bridge in a namespace of its own), each with its own 10.x address and its
own hostname (a UTS namespace per process, set by the start prefix).

    with NetnsLan(["broker", "gateway", "worker-a"]) as lan:
        lan.addr("gateway")                 # 10.A.B.11
        lan.prefix("gateway")               # argv prefix: ip netns exec NS unshare --uts sh -c ...
        lan.root_addr                       # 10.A.B.1: this (root) namespace's leg on the switch

The root namespace gets one veth leg on the switch (so the test process can probe the services
and the load generator can reach the gateway); nothing is forwarded through it, so its firewall
(Docker sets the FORWARD policy to DROP and bridged traffic through iptables) is never involved:
the bridge lives in the switch namespace, whose iptables are empty. Names carry a random tag;
``close()`` deletes every namespace (their veths go with them) and the root leg, also after a
failure half-way through ``open()``.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import uuid

# wrappers that exec the command (the PID stays the service's): set the hostname, then exec
HOSTNAME_EXEC = 'hostname "$0" && exec "$@"'


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _free_subnet() -> str:
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    while True:
        net = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}"
        if f"{net}." not in used:
            return net


class NetnsLan:
    def __init__(self, hosts: list[str]):
        self.tag = uuid.uuid4().hex[:6]
        self.hosts = list(hosts)
        self.net = _free_subnet()
        self.switch = f"ovh{self.tag}-sw"
        self.ns = {h: f"ovh{self.tag}-{i}" for i, h in enumerate(self.hosts)}
        self.root_leg = f"ovh{self.tag}r"
        self.root_addr = f"{self.net}.1"
        self._made: list[str] = []

    def addr(self, host: str) -> str:
        return f"{self.net}.{10 + self.hosts.index(host)}"

    def hostname(self, host: str) -> str:
        return f"{host}-{self.tag}"

    def prefix(self, host: str) -> list[str]:
        """Run a command on ``host``: its network namespace, its own hostname; exec all the way."""
        return ["ip", "netns", "exec", self.ns[host], "unshare", "--uts", "sh", "-c",
                HOSTNAME_EXEC, self.hostname(host)]

    def open(self) -> "NetnsLan":
        missing = [b for b in ("ip", "unshare", "hostname") if not shutil.which(b)]
        if missing:
            raise RuntimeError(f"missing {missing}: separate test hosts need iproute2 and util-linux")
        try:
            self._add_ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            self._plug(self.root_leg, f"ovh{self.tag}s", None, self.root_addr)
            for i, h in enumerate(self.hosts):
                self._add_ns(self.ns[h])
                self._plug(f"ovh{self.tag}e{i}", f"ovh{self.tag}h{i}", self.ns[h], self.addr(h))
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _plug(self, end: str, switch_end: str, ns: str | None, address: str) -> None:
        """A veth: ``switch_end`` on the bridge, ``end`` in ``ns`` (None: the root namespace)."""
        _ip("link", "add", end, "type", "veth", "peer", "name", switch_end)
        _ip("link", "set", switch_end, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", switch_end, "master", "br0", "up")
        where = ["-n", ns] if ns else []
        if ns:
            _ip("link", "set", end, "netns", ns)
        _ip(*where, "addr", "add", f"{address}/24", "dev", end)
        _ip(*where, "link", "set", end, "up")

    def close(self) -> None:
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self._made.clear()
        # veths die with their peer's namespace; any left in the root namespace (a failure
        # between creating one and moving it) are deleted by name
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"ovh{self.tag}"):
                subprocess.run(["ip", "link", "delete", name], capture_output=True)

    def __enter__(self) -> "NetnsLan":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
