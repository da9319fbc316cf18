"""A real ``frameserve serve`` process for fuzzing: started, watched, measured, restarted.

The fuzzers talk to a server in its own process, started the way a TD starts one
(``python -m frameserve serve``) with the test models, a temporary jobs folder and a data
root of hostile files (:func:`~tests.support.fuzz_training.make_data_root`). In its own process
a request that kills or freezes the server (a segfault, an out-of-memory kill, a blocked
``open`` holding the interpreter lock) shows as a crash or a hang of the server instead of
taking the test run down with it, and its memory can be read from ``/proc``.

:meth:`FuzzServer.check` sends one example (a list of probes) and returns every problem:
those of each exchange (:mod:`tests.support.fuzz_probes`), replies quoting a planted secret or
files written outside the jobs folder (:func:`~tests.support.fuzz_training.leaks`), and
whether the server is still whole afterwards: the process runs, both doors answer a health
request (HTTP ``/v2/health/live``, MLClient ``info``) within the bound, and its log shows no
unexpected failure. A server found dead or unresponsive is started again, so one bad example
does not spoil the ones after it.

::

    with FuzzServer(tmp_path) as server:
        problems = server.check([probe])
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from frameserve.serve.mlclient import messages as pb
from tests.support.fuzz_probes import Door, Outcome, Probe, exchange
from tests.support.fuzz_training import clean_up, leaks, make_data_root
from tests.support.node_client import (
    frame_request,
    inference_request,
    info_request,
    parse_reply,
)
from tests.support.paths import REPO, TEST_MODELS

__all__ = ["FuzzServer", "LogFinding", "ModelList", "scan_log"]

#: Seconds the server has to start answering.
START_TIMEOUT = 120.0
#: Log records (at ERROR or above) that mean the server failed, not the client.
_FAILURES = re.compile(
    r"unexpected failure|failed unexpectedly|accepting a connection failed|listener failed"
    r"|MemoryError"
)
#: Lines Python writes to stderr outside logging when a thread or the interpreter dies.
_STRAY = re.compile(r"^(Exception in thread|Fatal Python error|Segmentation fault)")
#: Log records worth reporting that are not the doors' failures (a job or model giving up).
_NOTED = re.compile(r"failed while predicting|failed its setup|training job .* failed")
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")
_HEALTH = b"GET /v2/health/live HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class LogFinding:
    """A log record of interest: ``failure`` (the server's fault) or ``noted``."""

    kind: str
    text: str


def scan_log(text: str) -> list[LogFinding]:
    """The failures and noted records in a piece of the server's log (whole records)."""
    findings = []
    records: list[str] = []
    for line in text.splitlines():
        if _STRAY.match(line):
            findings.append(LogFinding("failure", line))
        if _RECORD_START.match(line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    for record in records:
        first = record.partition("\n")[0]
        level = _RECORD_START.match(first)
        if level is not None and level[1] in ("ERROR", "CRITICAL") and _FAILURES.search(record):
            findings.append(LogFinding("failure", record[:4000]))
        elif _NOTED.search(first):
            findings.append(LogFinding("noted", record[:2000]))
    return findings


class ModelList(list[pb.Model]):
    """The models a server offers; shown by name (hypothesis prints the strategies' arguments)."""

    def __repr__(self) -> str:
        return f"ModelList({', '.join(model.name for model in self)})"


class FuzzServer:
    """A ``frameserve serve`` process on loopback, for fuzzing (a context manager).

    Args:
        workdir: an empty folder for the jobs folder, the data root and the log.
        cache_mb: the result cache's cap (``--cache-mb``).
        timeout: ``--read-timeout`` and ``--header-timeout``: how long a silent client is
            waited for (short, so probes that keep their connection open end quickly).
        bound: seconds an exchange may take before it counts as a hang.
        extra_args: more ``serve`` flags.

    Attributes:
        data_root: the ``--data-root`` (hostile files; see ``make_data_root``).
        outside: the folder next to it that nothing may write to.
        noted: log records seen that are reported but are not failures.
        restarts: how often the server was found dead or unresponsive and started again.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        cache_mb: int = 256,
        timeout: float = 1.0,
        bound: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.cache_bytes = cache_mb << 20
        self.timeout = timeout
        self.bound = bound
        self.extra_args = tuple(extra_args)
        self.jobs_folder = workdir / "jobs"
        self.data_root = make_data_root(workdir / "data")
        self.outside = workdir / "outside"
        self.log_path = workdir / "server.log"
        self.noted: list[LogFinding] = []
        self.restarts = 0
        self.mlclient = self.http = ("127.0.0.1", 0)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- the process -----------------------------------------------------------------------

    def start(self) -> FuzzServer:
        """Start the server and wait until both doors answer; return self."""
        self.mlclient, self.http = ("127.0.0.1", _free_port()), ("127.0.0.1", _free_port())
        command = [
            sys.executable,
            "-m",
            "frameserve",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.mlclient[1]),
            "--http-port",
            str(self.http[1]),
            "--models",
            str(TEST_MODELS),
            "--jobs-folder",
            str(self.jobs_folder),
            "--data-root",
            str(self.data_root),
            "--cache-mb",
            str(self.cache_bytes >> 20),
            "--read-timeout",
            str(self.timeout),
            "--header-timeout",
            str(self.timeout),
            "--reload-interval",
            "0",
            *self.extra_args,
        ]
        env = {key: value for key, value in os.environ.items() if key != "FRAMESERVE_MODELS"}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])
        )
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        problems = ["not tried"]
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the server exited while starting:\n{self.log_tail()}")
            problems = self.health_problems()
            if not problems:
                self.new_log()  # scan from here on
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"the server did not start within {START_TIMEOUT:.0f} s: {problems}\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 seconds."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        """Stop the server (killing it if it is stuck) and start a new one."""
        self.restarts += 1
        self.stop()
        self.start()

    def __enter__(self) -> FuzzServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise RuntimeError("the fuzz server is not started")
        return self._process.pid

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self._process is not None and self._process.poll() is None

    def address(self, door: Door) -> tuple[str, int]:
        """The address of ``door``."""
        return self.mlclient if door == "mlclient" else self.http

    def memory(self) -> tuple[int, int]:
        """The server's resident memory now and at its peak, in bytes (``/proc``)."""
        values = {"VmRSS": 0, "VmHWM": 0}
        with contextlib.suppress(OSError, RuntimeError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in values:
                    values[name] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]

    # -- the log ---------------------------------------------------------------------------

    def new_log(self) -> str:
        """What the server logged since the last call (whole lines)."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
            cut = data.rfind(b"\n") + 1
            self._log_offset += cut
            return data[:cut].decode("utf-8", "replace")
        return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""

    # -- judging ---------------------------------------------------------------------------

    def check(
        self,
        probes: Sequence[Probe],
        *,
        training: bool = False,
        outcomes: list[Outcome] | None = None,
    ) -> list[str]:
        """Send ``probes`` in order; return every problem (an empty list: all is well).

        ``training``: clean up afterwards (cancel and delete jobs, delete uploads), so one
        example's jobs neither train on nor collide with the next one's. ``outcomes``, if
        given, gets each probe's :class:`Outcome`.
        """
        problems = []
        for probe in probes:
            outcome = self.send(probe)
            if outcomes is not None:
                outcomes.append(outcome)
            problems += outcome.problems
            if outcome.ended == "hang":
                break
        if training and self.alive():
            try:
                problems += clean_up(self.http, timeout=self.bound)
            except OSError as exc:
                problems.append(f"crash: cleaning up after the example failed: {exc}")
        problems += self.whole_problems()
        if any(problem.startswith(("crash", "unresponsive")) for problem in problems):
            problems.append(f"server log (tail):\n{self.log_tail(15)}")
            self.restart()
        return problems

    def assert_survives(self, probes: Sequence[Probe], *, training: bool = False) -> None:
        """Fail (``AssertionError``) unless :meth:`check` finds no problem."""
        problems = self.check(probes, training=training)
        sent = "\n".join(repr(probe) for probe in probes)
        assert not problems, "\n".join(["the server failed the example:", *problems, sent])

    def send(self, probe: Probe) -> Outcome:
        """Send one probe and judge it, confinement included."""
        outcome = exchange(self.address(probe.door), probe, bound=self.bound)
        outcome.problems += leaks(outcome.received, self.outside)
        return outcome

    def whole_problems(self) -> list[str]:
        """Whether the server is still whole: alive, both doors healthy, a clean log."""
        if not self.alive():
            code = None if self._process is None else self._process.returncode
            return [f"crash: the server exited with {code}"]
        problems = self.health_problems()
        for finding in scan_log(self.new_log()):
            if finding.kind == "failure":
                problems.append(f"server log: {finding.text}")
            else:
                self.noted.append(finding)
        return problems

    def health_problems(self) -> list[str]:
        """Problems answering a health request on each door (none when both answer)."""
        problems = []
        http = exchange(self.http, Probe("http", _HEALTH), bound=self.bound)
        if http.ended == "hang" or http.statuses[:1] != [200]:
            problems.append(
                f"unresponsive: the HTTP door does not answer a health request ({http.ended}, "
                f"{http.received[:120]!r})"
            )
        if not self.models():
            problems.append("unresponsive: the MLClient door does not answer an info request")
        return problems

    def fuzzable_models(self, *, skip: Sequence[str] = ("slow",)) -> ModelList:
        """The models worth fuzzing: each run once on small frames (so it is loaded, and
        memory is measured with it loaded); those that cannot set up here (weights this
        installation lacks) and those in ``skip`` (slow on purpose) are left out."""
        usable = ModelList()
        for model in self.models():
            if model.name in skip:
                continue
            frames = [np.full((max(p.channels, 1), 32, 32), 0.5, np.float32) for p in model.inputs]
            request = frame_request(inference_request(model, frames))
            outcome = self.send(Probe("mlclient", request, True, "warm up"))
            try:
                reply = parse_reply(outcome.received)
            except Exception:  # a malformed reply: the fuzzers will meet it again
                reply = pb.RespondWrapper()
            if "failed to set up" in reply.error.msg:
                self.noted.append(LogFinding("noted", f"not fuzzed: {reply.error.msg}"))
                continue
            usable.append(model)
        return usable

    def models(self) -> ModelList:
        """The models the MLClient door offers (its info reply; empty if it gave none)."""
        info = exchange(
            self.mlclient, Probe("mlclient", frame_request(info_request())), bound=self.bound
        )
        try:
            return ModelList(parse_reply(info.received).r1.models if info.ended == "eof" else [])
        except Exception:  # a malformed reply
            return ModelList()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
