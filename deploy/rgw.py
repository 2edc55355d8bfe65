"""A throwaway one-node Ceph RGW on loopback (a monitor, one memstore OSD, a radosgw): the
S3 server of the storage contract tests and of ``make run-s3``.  Needs Debian's
``ceph-mon ceph-osd radosgw ceph-common`` (tests/sysdeps.py installs them for the tests).

    python deploy/rgw.py up DIR [--port N] [--mon-port N]   # prints the AWS_* variables
    python deploy/rgw.py down DIR                           # stops what ``up`` started

From Python: ``rgw = start(dir)`` then ``rgw.stop()``; ``rgw.env()`` is the environment
that points boto3 (and ``minicdn origin --storage s3://...``) at it.

Everything lives under DIR: ceph.conf, the monitor's store, logs, ``rgw.json`` (endpoint,
keys and the PIDs ``down`` stops).  The OSD keeps objects in memory (memstore, at most
2 GiB): a stopped cluster's data is gone, and ``up`` refuses a DIR that already holds one
(remove it first).  Nothing here removes files; processes are stopped by PID only, and only
when their command line still names this DIR's ceph.conf (a PID may have been reused).
Ports are free loopback ports unless given, so parallel runs do not collide.  Stdlib only:
the operator's CLI must not need the project installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ACCESS_KEY", "SECRET_KEY", "Rgw", "RgwError", "load", "start"]

ACCESS_KEY = "MINICDNACCESSKEY"
SECRET_KEY = "minicdnsecretkey"
REGION = "us-east-1"  # RGW's default zonegroup accepts any; boto3 must sign with one
START_TIMEOUT = 60.0  # seconds for the whole start (about 12 s on a 2-core machine)
STOP_TIMEOUT = 10.0  # seconds each daemon gets after SIGTERM before SIGKILL
DAEMONS = ("rgw", "osd", "mon")  # the order they are stopped in
_LOGS = ("mon.stdout", "osd.stdout", "rgw.stdout", "mon.a.log", "osd.0.log", "client.rgw.a.log")

CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr1 = false
ms mon client mode = crc
ms client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 2147483648
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
log file = {dir}/$name.log
keyring = {dir}/keyring
mon data = {dir}/$name
osd data = {dir}/$name
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{port}
"""


class RgwError(Exception):
    """The cluster did not start (the message ends with the tail of its logs)."""


@dataclass
class Rgw:
    dir: Path
    port: int
    mon_port: int
    pids: dict[str, int] = field(default_factory=dict)  # "mon", "osd", "rgw" → PID
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point an S3 client at this RGW."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }

    def save(self) -> None:
        state = {"endpoint": self.endpoint, "port": self.port, "mon_port": self.mon_port, "pids": self.pids}
        state |= {"access_key": self.access_key, "secret_key": self.secret_key}
        (self.dir / "rgw.json").write_text(json.dumps(state, indent=1) + "\n")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM each daemon by PID (rgw, osd, mon), SIGKILL one still running after
        ``timeout`` seconds.  Removes no file."""
        for name in DAEMONS:
            pid = self.pids.get(name)
            if pid is not None and self._ours(pid):
                _signal(pid, signal.SIGTERM)
                if not self._gone(name, pid, timeout):
                    _signal(pid, signal.SIGKILL)
                    self._gone(name, pid, timeout)
            self.pids.pop(name, None)
            self._procs.pop(name, None)

    def _ours(self, pid: int) -> bool:
        try:
            return str(self.conf) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False

    def _gone(self, name: str, pid: int, timeout: float) -> bool:
        proc = self._procs.get(name)
        if proc is not None:  # our child: reap it, or it stays a zombie
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def start(dir: str | os.PathLike[str], port: int | None = None, mon_port: int | None = None,
          timeout: float = START_TIMEOUT) -> Rgw:
    """A new cluster in ``dir`` (created; it must not hold one), S3 answering on ``port``;
    returns once a signed request can be made.  On any failure, stops what it started and
    raises RgwError with the tail of the logs.  Free ports unless given; a port taken
    between its choice and its bind (a parallel run) is chosen again, twice at most."""
    for attempt in range(3):
        rgw = Rgw(Path(dir).resolve(), port or _free_port(), mon_port or _free_port())
        try:
            return _start(rgw, time.monotonic() + timeout)
        except RgwError as exc:
            raced = "Address already in use" in str(exc) and attempt < 2 and not (port and mon_port)
            if not raced:
                raise
            _clear(rgw.dir)
    raise AssertionError("unreachable")


def _clear(d: Path) -> None:
    """Remove what a failed ``_start`` made in ``d`` (and only that), for the next attempt."""
    for sub in ("mon.a", "osd.0", "run"):
        shutil.rmtree(d / sub, ignore_errors=True)
    for name in ("ceph.conf", "keyring", "monmap", *_LOGS):
        (d / name).unlink(missing_ok=True)


def _start(rgw: Rgw, deadline: float) -> Rgw:
    d = rgw.dir
    if (d / "ceph.conf").exists():
        raise RgwError(f"{d} holds a cluster already: stop it (rgw.py down {d}) and remove the folder")
    for sub in ("mon.a", "osd.0", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    rgw.conf.write_text(CONF.format(fsid=fsid, mon_port=rgw.mon_port, port=rgw.port, dir=d))
    c = ["-c", str(rgw.conf)]
    try:
        _run(deadline, "ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n", "mon.",
             "--cap", "mon", "allow *")
        _run(deadline, "monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{rgw.mon_port}]",
             "--fsid", fsid, str(d / "monmap"))
        _run(deadline, "ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"),
             "--keyring", str(d / "keyring"))
        _daemon(rgw, "mon", "ceph-mon", *c, "-i", "a", "-f")
        _run(deadline, "ceph", *c, "--connect-timeout", "20", "osd", "create")
        _run(deadline, "ceph-osd", *c, "-i", "0", "--mkfs")
        _daemon(rgw, "osd", "ceph-osd", *c, "-i", "0", "-f")
        _daemon(rgw, "rgw", "radosgw", *c, "-n", "client.rgw.a", "-f")
        _wait_http(rgw, deadline)
        _run(deadline, "radosgw-admin", *c, "user", "create", "--uid=minicdn", "--display-name=minicdn",
             f"--access-key={rgw.access_key}", f"--secret-key={rgw.secret_key}")
    except BaseException as exc:
        rgw.stop()
        if isinstance(exc, RgwError | OSError | subprocess.SubprocessError):
            raise RgwError(f"RGW in {d} did not start: {exc}\n{_tail(d)}") from exc
        raise
    rgw.save()
    return rgw


def _run(deadline: float, *cmd: str) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise RgwError(f"out of time before {cmd[0]}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise RgwError(f"{' '.join(cmd)} did not finish in time") from exc
    if done.returncode != 0:
        raise RgwError(f"{' '.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")


def _daemon(rgw: Rgw, name: str, *cmd: str) -> None:
    # A session of its own: Ctrl-C at the operator's terminal does not reach it (``down`` does).
    with open(rgw.dir / f"{name}.stdout", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    rgw.pids[name] = proc.pid
    rgw._procs[name] = proc


def _wait_http(rgw: Rgw, deadline: float) -> None:
    while True:
        for name, proc in rgw._procs.items():
            if proc.poll() is not None:
                raise RgwError(f"{name} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(rgw.endpoint + "/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: anonymous requests may be refused
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RgwError(f"{rgw.endpoint} did not answer in time")
        time.sleep(0.1)


def _tail(d: Path, lines: int = 15) -> str:
    out = []
    for name in _LOGS:
        with contextlib.suppress(OSError):
            text = (d / name).read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {d / name}\n" + "\n".join(text))
    return "\n".join(out) or f"(no logs in {d})"


def load(dir: str | os.PathLike[str]) -> Rgw:
    """The cluster ``up`` started in ``dir``, from its rgw.json (to stop it)."""
    d = Path(dir).resolve()
    state = json.loads((d / "rgw.json").read_text())
    return Rgw(d, state["port"], state["mon_port"], {k: int(v) for k, v in state["pids"].items()},
               state["access_key"], state["secret_key"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"  # a zombie has exited (its parent has not reaped it yet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rgw.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster in DIR and print its AWS_* variables")
    up.add_argument("dir")
    up.add_argument("--port", type=int, help="S3 port (default: a free one)")
    up.add_argument("--mon-port", type=int, help="monitor port (default: a free one)")
    down = sub.add_parser("down", help="stop the cluster started in DIR")
    down.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            rgw = start(args.dir, args.port, args.mon_port)
        except RgwError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"# RGW up on {rgw.endpoint} (pids {rgw.pids}); stop: python deploy/rgw.py down {rgw.dir}")
        for k, v in rgw.env().items():
            print(f"export {k}={v}")
        return 0
    try:
        rgw = load(args.dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"no cluster state in {args.dir}: {exc}", file=sys.stderr)
        return 1
    rgw.stop()
    print(f"stopped the RGW in {rgw.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
