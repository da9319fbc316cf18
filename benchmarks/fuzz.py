"""Fuzz frameserve's front doors for minutes against a real server; report what broke.

Starts ``python -m frameserve serve`` on loopback (a temporary jobs folder, the test models, a
data root of hostile files: :class:`tests.support.fuzz_server.FuzzServer`) and sends it
hypothesis-generated examples (the strategies of ``tests/support/fuzz_*.py``) for the time
given, one door after another in slices. After every example the server must still be whole:
process alive, both doors answering a health request, no unexpected failure in its log.

Reported per door: examples and requests sent, how the server answered (status classes),
crashes (the server process died), hangs (no answer and no close within the bound, or a door
that stopped answering health requests), 5xx answers other than the deliberate ones (503 busy
or a model that failed to load, 504 a request's own deadline, 507 uploads full) and MLClient
"internal server error" replies, leaks (a planted secret quoted, a file written outside the jobs
folder), failures in the server's log; and the server's resident memory before and after,
against the target "back within the result cache's cap plus 500 MB". The first failing
examples of each kind are saved (``--out``) as the exact bytes sent; ``--replay DIR`` sends one
again to a fresh server.

Targets: 0 crashes, 0 hangs, 0 5xx other than the deliberate ones, memory within the target.
The exit status is 1 when a target is missed.

Usage::

    python benchmarks/fuzz.py --minutes 5
    python benchmarks/fuzz.py --minutes 30 --door http --seed 7 --out /tmp/fuzz-findings
    python benchmarks/fuzz.py --replay /tmp/fuzz-findings/0001-5xx-http
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "src", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from hypothesis import given, seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests.support import fuzz_http, fuzz_mlclient, fuzz_training  # noqa: E402
from tests.support.fuzz_probes import LONG, Outcome, Probe  # noqa: E402
from tests.support.fuzz_server import FuzzServer  # noqa: E402

from frameserve.serve.mlclient import messages as pb  # noqa: E402

logger = logging.getLogger("fuzz")

DOORS = ("mlclient", "http", "training")
#: Seconds fuzzing one door before the next door's turn.
SLICE_SECONDS = 30.0
#: Memory the server may keep after fuzzing, above its start and the result cache's cap.
MEMORY_SLACK = 500 << 20
#: Failing examples saved per kind of failure.
KEEP_PER_KIND = 5
#: Kinds of problem, by the start of its text (tests/support/fuzz_probes, fuzz_server).
KINDS = (
    ("crash", "crash"),
    ("hang", "hang"),
    ("unresponsive", "hang"),
    ("5xx", "5xx"),
    ("leak", "leak"),
    ("write outside", "leak"),
    ("server log", "server log"),
    ("malformed reply", "malformed reply"),
    ("smuggling", "smuggling"),
)


class TimeUp(BaseException):
    """Ends a hypothesis run when its slice of time is over (not an ``Exception``, so
    hypothesis neither catches it nor shrinks)."""


@dataclass
class DoorReport:
    """What fuzzing one door found."""

    examples: int = 0
    requests: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    """The whole run."""

    minutes: float
    seed: int
    started: str
    doors: dict[str, DoorReport]
    restarts: int = 0
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    memory_target: int = 0
    saved: list[str] = field(default_factory=list)
    noted: list[str] = field(default_factory=list)

    def missed(self) -> list[str]:
        """The targets missed."""
        totals: Counter[str] = Counter()
        for door in self.doors.values():
            totals.update(door.problems)
        missed = [f"{kind}: {totals[kind]}" for kind in sorted(totals) if totals[kind]]
        if self.rss_after > self.memory_target:
            missed.append(
                f"memory: {self.rss_after >> 20} MB after, target {self.memory_target >> 20} MB"
            )
        return missed


def kind_of(problem: str) -> str:
    """The kind of a problem, from the start of its text."""
    for start, kind in KINDS:
        if problem.startswith(start):
            return kind
    return "other"


def answer_of(outcome: Outcome) -> str:
    """How the server answered one probe: status classes, or ``closed``/``reset``/``hang``."""
    if outcome.probe.door == "http":
        if outcome.statuses:
            classes = {str(s) if s >= 500 else f"{s // 100}xx" for s in outcome.statuses}
            return ",".join(sorted(classes))
        return "closed" if outcome.ended == "eof" else outcome.ended
    if outcome.ended != "eof" or not outcome.received:
        return "closed" if outcome.ended == "eof" else outcome.ended
    try:
        reply = pb.RespondWrapper.FromString(outcome.received[12:])
    except Exception:  # a malformed reply (counted as a problem already)
        return "malformed"
    return "error reply" if reply.HasField("error") else "ok reply"


def strategy_of(door: str, models: list[pb.Model], root: Path) -> st.SearchStrategy[list[Probe]]:
    """The examples of one door: lists of probes, sent in order."""
    one = st.lists  # a single probe, as a list
    if door == "mlclient":
        probes = st.one_of(
            fuzz_mlclient.headers(),
            fuzz_mlclient.protobuf_bodies(),
            fuzz_mlclient.inference_requests(models),
            fuzz_mlclient.inference_requests(models),
        )
        return one(probes, min_size=1, max_size=1)
    if door == "http":
        probes = st.one_of(
            fuzz_http.raw_requests(),
            fuzz_http.smuggling(),
            fuzz_http.inference(models),
            fuzz_http.inference(models),
            fuzz_http.metadata(models),
        )
        return one(probes, min_size=1, max_size=1)
    return st.one_of(
        fuzz_training.uploads(), fuzz_training.jobs(root), fuzz_training.job_paths(root)
    )


class Findings:
    """Saves the first failing examples of each kind as the bytes sent."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self.per_kind: Counter[str] = Counter()
        self.saved: list[str] = []

    def save(self, door: str, probes: list[Probe], problems: list[str], log_tail: str) -> None:
        kinds = sorted({kind_of(problem) for problem in problems} - {"other"})
        fresh = [kind for kind in kinds if self.per_kind[kind] < KEEP_PER_KIND]
        self.per_kind.update(kinds)
        if not fresh:
            return
        self.count += 1
        slug = "-".join(kind.replace(" ", "_") for kind in fresh)
        folder = self.folder / f"{self.count:04d}-{slug}-{door}"
        folder.mkdir(parents=True, exist_ok=True)
        described = []
        for index, probe in enumerate(probes):
            name = f"probe-{index}.bin"
            (folder / name).write_bytes(probe.data)
            described.append(
                {
                    "file": name,
                    "door": probe.door,
                    "half_close": probe.half_close,
                    "label": probe.label,
                    "refuse": probe.refuse,
                }
            )
        (folder / "probes.json").write_text(json.dumps(described, indent=2))
        (folder / "problems.txt").write_text("\n\n".join(problems) + "\n")
        (folder / "server-log-tail.txt").write_text(log_tail + "\n")
        self.saved.append(str(folder))


def fuzz_door(
    server: FuzzServer,
    door: str,
    strategy: st.SearchStrategy[list[Probe]],
    report: DoorReport,
    findings: Findings,
    *,
    until: float,
    run_seed: int,
) -> None:
    """Send examples of ``strategy`` to ``server`` until the monotonic time ``until``."""

    @seed(run_seed)
    @LONG
    @given(strategy)
    def run(probes: list[Probe]) -> None:
        if time.monotonic() >= until:
            raise TimeUp
        outcomes: list[Outcome] = []
        problems = server.check(probes, training=door == "training", outcomes=outcomes)
        report.examples += 1
        report.requests += len(outcomes)
        report.answers.update(answer_of(outcome) for outcome in outcomes)
        report.problems.update({kind_of(problem) for problem in problems} - {"other"})
        if problems:
            logger.warning("%s: %s", door, problems[0][:300])
            findings.save(door, probes, problems, server.log_tail(60))

    with contextlib.suppress(TimeUp):
        run()


def fuzz(args: argparse.Namespace) -> Report:
    """Run the long mode; return its report."""
    doors = DOORS if args.door == "all" else (args.door,)
    report = Report(
        minutes=args.minutes,
        seed=args.seed,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        doors={door: DoorReport() for door in doors},
    )
    findings = Findings(Path(args.out))
    with (
        tempfile.TemporaryDirectory(prefix="frameserve-fuzz-") as workdir,
        FuzzServer(
            Path(workdir), cache_mb=args.cache_mb, timeout=args.timeout, bound=args.bound
        ) as server,
    ):
        state = fuzz_training.keep_a_finished_job(server.http, server.data_root, timeout=args.bound)
        logger.info("server pid %d; the kept job is %s", server.pid, state)
        models = server.fuzzable_models()
        report.rss_before = server.memory()[0]
        end = time.monotonic() + args.minutes * 60
        turn = 0
        while time.monotonic() < end:
            door = doors[turn % len(doors)]
            until = min(end, time.monotonic() + SLICE_SECONDS)
            pid = server.pid
            fuzz_door(
                server,
                door,
                strategy_of(door, models, server.data_root),
                report.doors[door],
                findings,
                until=until,
                run_seed=args.seed * 100_003 + turn,
            )
            if server.pid != pid:  # restarted: measure memory from the new start
                report.rss_before = server.memory()[0]
            turn += 1
        time.sleep(2.0)  # let requests in flight finish and memory settle
        report.rss_after, report.rss_peak = server.memory()
        report.memory_target = report.rss_before + server.cache_bytes + MEMORY_SLACK
        report.restarts = server.restarts
        report.noted = [finding.text[:500] for finding in server.noted[:20]]
    report.saved = findings.saved
    return report


def replay(folder: Path, args: argparse.Namespace) -> int:
    """Send a saved example to a fresh server; print what happened; 1 if it still fails."""
    described = json.loads((folder / "probes.json").read_text())
    probes = [
        Probe(
            item["door"],
            (folder / item["file"]).read_bytes(),
            item["half_close"],
            item["label"],
            item.get("refuse", False),
        )
        for item in described
    ]
    with (
        tempfile.TemporaryDirectory(prefix="frameserve-fuzz-") as workdir,
        FuzzServer(
            Path(workdir), cache_mb=args.cache_mb, timeout=args.timeout, bound=args.bound
        ) as server,
    ):
        fuzz_training.keep_a_finished_job(server.http, server.data_root, timeout=args.bound)
        outcomes: list[Outcome] = []
        training = any(probe.label.startswith("training") for probe in probes)
        problems = server.check(probes, training=training, outcomes=outcomes)
    for outcome in outcomes:
        print(
            f"{outcome.probe!r}\n  -> {outcome.ended} after {outcome.seconds:.2f} s: "
            f"{outcome.received[:400]!r}"
        )
    print("\n".join(problems) or "no problem: the server handled it")
    return 1 if problems else 0


def print_report(report: Report, write: Callable[[str], object] = print) -> None:
    """Print the report as a table."""
    write(f"fuzzed for {report.minutes} min from {report.started} (seed {report.seed})")
    write(f"{'door':<10} {'examples':>9} {'requests':>9}  answers / problems")
    for name, door in report.doors.items():
        answers = ", ".join(f"{key} {value}" for key, value in door.answers.most_common())
        problems = ", ".join(f"{key} {value}" for key, value in sorted(door.problems.items()))
        write(f"{name:<10} {door.examples:>9} {door.requests:>9}  {answers}")
        write(f"{'':<31}problems: {problems or 'none'}")
    write(
        f"memory (RSS): {report.rss_before / 2**20:.0f} MB before, "
        f"{report.rss_after / 2**20:.0f} MB after, peak {report.rss_peak / 2**20:.0f} MB; "
        f"target: at most {report.memory_target / 2**20:.0f} MB after "
        f"(before + cache cap + 500 MB); server restarts: {report.restarts}"
    )
    for path in report.saved:
        write(f"saved: {path}")
    for text in report.noted[:5]:
        write(f"noted (not a failure): {text.splitlines()[0][:200]}")
    missed = report.missed()
    write("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz")
    parser.add_argument("--door", choices=[*DOORS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (reproducible)")
    parser.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "frameserve-fuzz-findings"),
        help="folder for failing examples (default: frameserve-fuzz-findings in the temp folder)",
    )
    parser.add_argument("--cache-mb", type=int, default=256, help="the server's result cache")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="the server's --read-timeout and --header-timeout",
    )
    parser.add_argument(
        "--bound", type=float, default=30.0, help="seconds an exchange may take before it is a hang"
    )
    parser.add_argument("--replay", type=Path, help="send a saved example again and stop")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.replay is not None:
        return replay(args.replay, args)
    report = fuzz(args)
    if args.json:
        data = {**asdict(report), "missed": report.missed()}
        data["doors"] = {  # asdict would turn each Counter into a Counter of its pairs
            name: {**asdict(door), "answers": dict(door.answers), "problems": dict(door.problems)}
            for name, door in report.doors.items()
        }
        print(json.dumps(data, indent=2))
    else:
        print_report(report)
    return 1 if report.missed() else 0


if __name__ == "__main__":
    sys.exit(main())
