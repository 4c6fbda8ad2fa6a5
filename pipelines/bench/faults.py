"""``dpm bench faults``: a labeling job whose actors are killed K times and whose driver is
killed and restarted once, against a clean run of the same job.

The bench starts a local Ray cluster of its own (stopped at the end; never ``ray stop``),
generates a synthetic corpus of long conversations (or takes ``--corpus``), then runs
``dpm label`` twice as a subprocess joining that cluster:

- clean: uninterrupted;
- faults: at K random moments an actor that is in the middle of a conversation is killed
  (SIGKILL to the pid Ray's state API gives for the actor's id; Ray restarts it), and once the
  driver itself is killed (SIGKILL) and started again with the same ``--run-id``, which resumes
  the run. A kill lands a random 1..C-3 utterances after the conversation's last checkpoint
  position and at least 2 before the next (C = ``--checkpoint-every``; after the first
  checkpoint, so there is one to resume from): the actor that gets there first waits in a hold
  the bench armed, and its per-utterance trace lines say where it stands
  (:mod:`pipelines.bench.fault_trace`).

Reported: the rows of the faulted run's emotion table against the clean one's
(``rows_duplicated``, ``rows_lost``, ``tables_equal_clean`` with probabilities within 1e-6),
``utterances_recomputed`` (utterances the faulted run computed, counted from the actors'
trace lines, minus the utterances in the corpus) against the bound kills x C x slots per
actor, and the wall time of each run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.bench.fault_tables import compare_tables, run_state
from pipelines.bench.fault_trace import (
    HOLD_ENV,
    TraceLog,
    alive_pids,
    arm_hold,
    held_pids,
    release,
    traced_env,
    wait_processes_ended,
    worker_actors,
)

log = logging.getLogger("dpm.bench")
REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.05
# longest the bench waits for killed or orphaned actor processes to end
ACTORS_END_TIMEOUT_S = 120.0
SETTINGS_KEYS = ("utterances_total", "conversations", "utterances_per_conversation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", help="corpus folder or manifest (default: generate one)")
    parser.add_argument("--conversations", type=int, default=12, help="generated conversations")
    parser.add_argument("--min-utterances", type=int, default=150)
    parser.add_argument("--max-utterances", type=int, help="default: --min-utterances + 20")
    parser.add_argument("--kills", type=int, default=5, help="actor kills (by actor id)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed and kill moments")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="utterances")
    parser.add_argument(
        "--slots-per-actor",
        type=int,
        default=1,
        help="conversations one actor labels at once (the job's slots_per_actor)",
    )
    parser.add_argument("--model", help="model folder (default: the packaged model)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per actor")
    parser.add_argument("--workdir", help="where the corpus and tables go (default: temp dir)")
    parser.add_argument("--timeout-s", type=float, default=7200.0, help="longest a driver may run")


def run(args: argparse.Namespace) -> int:
    if args.kills < 0 or args.checkpoint_every < 0 or args.slots_per_actor < 1:
        print(
            "dpm bench faults: --kills and --checkpoint-every must be >= 0, --slots-per-actor >= 1",
            file=sys.stderr,
        )
        return 2
    args.max_utterances = args.max_utterances or args.min_utterances + 20
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="dpm-bench-faults-")
    os.makedirs(args.workdir, exist_ok=True)
    corpus = args.corpus or generate(args)
    bench = FaultBench(args, corpus)
    try:
        report = bench.run()
    finally:
        bench.stop()
    print(json.dumps(report, indent=2))
    ok = report["exit_codes"]["clean"] == 0 and report["exit_codes"]["faults"] == 0
    return 0 if ok else 1


def generate(args: argparse.Namespace) -> str:
    """The synthetic corpus of long conversations (``dpm synth``'s generator)."""
    from dpm_worker.corpus import SynthConfig, generate_corpus

    folder = os.path.join(args.workdir, "corpus")
    generate_corpus(
        folder,
        SynthConfig(
            conversations=args.conversations,
            seed=args.seed,
            min_utterances=args.min_utterances,
            max_utterances=args.max_utterances,
        ),
    )
    return folder


class FaultBench:
    """One cluster, two runs (clean and faulted), the kills, the comparison."""

    def __init__(self, args: argparse.Namespace, corpus: str) -> None:
        self.args = args
        self.corpus = corpus
        self.rng = random.Random(args.seed)
        # where kills are prepared (fault_trace's holds); the workers inherit the variable
        self.hold = tempfile.mkdtemp(prefix="dpm-bench-hold-")
        os.environ[HOLD_ENV] = self.hold
        self.env = start_cluster()
        import ray

        self.address = ray.get_runtime_context().gcs_address
        node: Any = ray._private.worker._global_node  # this process started the cluster
        session = node.get_session_dir_path()
        self.trace = TraceLog(os.path.join(session, "logs"))
        self.events: list[dict[str, Any]] = []
        self.killed_pids: set[int] = set()
        self.old_actors: set[str] = set()
        self.started = time.monotonic()  # of the faulted run, for the events' times

    def stop(self) -> None:
        import ray

        ray.shutdown()  # stops exactly the cluster this process started
        os.environ.pop(HOLD_ENV, None)
        shutil.rmtree(self.hold, ignore_errors=True)

    def run(self) -> dict[str, Any]:
        args = self.args
        clean_out = os.path.join(args.workdir, "clean")
        faults_out = os.path.join(args.workdir, "faults")
        t0 = time.monotonic()
        clean = self.driver(clean_out, "clean", "clean")
        clean_code = clean.wait(timeout=args.timeout_s)
        clean_s = time.monotonic() - t0
        self.trace.scan()
        clean_computed, clean_attempts = self.trace.lines, len(self.trace.attempts)
        self.old_actors = set(worker_actors())
        t0 = time.monotonic()
        faults_code, driver_runs = self.faulted_run(faults_out)
        faults_s = time.monotonic() - t0
        # Actors outlive a killed driver until Ray stops them, and may label on meanwhile:
        # count their lines once every actor process seen has ended (a dead process writes
        # nothing more), however slow the machine.
        self.trace.scan()
        running = wait_processes_ended(set(self.trace.positions), ACTORS_END_TIMEOUT_S)
        if running:
            log.warning(
                "actor processes %s still running; their last lines may be missing", sorted(running)
            )
        self.trace.scan()
        faults_computed = self.trace.lines - clean_computed
        tables = compare_tables(clean_out, faults_out)
        total = tables["utterances_total"]
        kills = sum(e["kind"] == "actor" for e in self.events)
        interval = args.checkpoint_every * args.slots_per_actor
        bound = kills * interval
        recomputed = faults_computed - total
        lost = self.trace.lost_work(since=clean_attempts)
        by_kills = sum(n for pid, n in lost if pid in self.killed_pids)
        return {
            "benchmark": "faults",
            "kills": kills,
            "driver_restarts": driver_runs - 1,
            "utterances_total": total,
            "utterances_computed_clean": clean_computed,
            "utterances_computed_faults": faults_computed,
            "utterances_recomputed": recomputed,
            # Split by what stopped the attempt whose work was redone: an actor kill, or the
            # driver kill (which takes every actor of that driver with it).
            "recomputed_after_actor_kills": by_kills,
            "recomputed_after_driver_kill": recomputed - by_kills,
            "recomputed_bound_kills_x_interval_x_slots": bound,
            "recomputed_within_bound": recomputed <= bound,
            "recomputed_bound_with_driver_kill": (kills + (driver_runs - 1) * args.actors)
            * interval,
            **{k: v for k, v in tables.items() if k not in SETTINGS_KEYS},
            "wall_s_clean": round(clean_s, 2),
            "wall_s_faults": round(faults_s, 2),
            "ratio_wall_faults_over_clean": round(faults_s / max(clean_s, 1e-6), 3),
            "exit_codes": {"clean": clean_code, "faults": faults_code},
            "run_state_faults": run_state(faults_out, "faults"),
            "events": self.events,
            "settings": {
                "conversations": tables["conversations"],
                "utterances_per_conversation": tables["utterances_per_conversation"],
                "kills_asked": args.kills,
                "seed": args.seed,
                "checkpoint_every": args.checkpoint_every,
                "slots_per_actor": args.slots_per_actor,
                "actors": args.actors,
                "cpus_per_actor": args.cpus_per_actor,
                "torch_threads": args.threads,
                "model": args.model or "default",
                "corpus": self.corpus,
                "workdir": args.workdir,
            },
        }

    def faulted_run(self, output: str) -> tuple[int, int]:
        """K actor kills and one driver kill at random places; returns (exit code, drivers)."""
        args = self.args
        plan = ["actor"] * args.kills
        plan.insert(self.rng.randint(0, len(plan)), "driver")
        self.started = time.monotonic()
        driver = self.driver(output, "faults", "faults-1")
        drivers = 1
        for kind in plan:
            target = self.wait_mid_conversation(driver)
            if target is None:  # the run finished first
                log.warning("the run ended before the %s kill", kind)
                break
            pid, actor_id = target  # held where the trace says it is
            if kind == "actor":
                self.kill_actor(pid, actor_id)
                release(self.hold)  # any other held actor goes on
                continue
            # The driver: its actors die with it (Ray kills a dead owner's actors). They go on
            # from the hold first, so the driver dies under running actors.
            position = self.trace.positions.get(pid)
            release(self.hold)
            self.old_actors |= set(alive_pids(self.old_actors, self.killed_pids).values())
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            self.events.append({"kind": "driver", "at_s": self.clock(), **_where(position)})
            drivers += 1
            driver = self.driver(output, "faults", f"faults-{drivers}")
        return driver.wait(timeout=args.timeout_s), drivers

    def wait_mid_conversation(self, driver: subprocess.Popen) -> tuple[int, str] | None:
        """An actor held a random 1..C-3 utterances past its conversation's last checkpoint
        (not its first interval), so at least two before its next one; None if the run ended
        first.

        The actors are not chased (a small model labels an interval faster than the trace can
        be watched): the hold is armed and the first actor to reach such a position waits in
        it (:mod:`pipelines.bench.fault_trace`) while the bench reads the actor table, slow
        on a loaded machine. A held process that is not a current actor of the run is let go.
        """
        every = self.args.checkpoint_every or 25
        margin = 2 if every > 3 else 0
        past = self.rng.randint(1, max(1, every - 1 - margin))
        arm_hold(self.hold, every, past)
        deadline = time.monotonic() + self.args.timeout_s
        while driver.poll() is None and time.monotonic() < deadline:
            held = held_pids(self.hold)
            if held:
                alive = alive_pids(self.old_actors, self.killed_pids)
                for pid in held - set(alive):
                    release(self.hold, pid)
                targets = sorted((pid, alive[pid]) for pid in held if pid in alive)
                if targets:
                    self.trace.scan()  # the held lines are written: positions are exact
                    return self.rng.choice(targets)
            time.sleep(POLL_S)
        release(self.hold)
        return None

    def kill_actor(self, pid: int, actor_id: str) -> None:
        os.kill(pid, signal.SIGKILL)  # the pid of this actor id, from Ray's state API
        self.killed_pids.add(pid)
        wait_processes_ended({pid}, ACTORS_END_TIMEOUT_S, POLL_S)
        self.trace.scan()  # its last lines: where it really stopped
        self.events.append(
            {
                "kind": "actor",
                "actor_id": actor_id,
                "pid": pid,
                "at_s": self.clock(),
                **_where(self.trace.positions.get(pid)),
            }
        )

    def clock(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def driver(self, output: str, run_id: str, name: str) -> subprocess.Popen:
        """``dpm label`` as a subprocess joining the bench's cluster."""
        args = self.args
        command = [
            sys.executable, "-m", "pipelines.cli", "label",
            "--input", self.corpus, "--output", output, "--run-id", run_id,
            "--address", self.address, "--actors", str(args.actors),
            "--cpus-per-actor", str(args.cpus_per_actor),
        ]  # fmt: skip
        if args.model:
            command += ["--model", args.model]
        command += [
            f"torch_threads={args.threads}",
            f"checkpoint_every_utterances={args.checkpoint_every}",
            # Kills are the bench's, not the job's failures: let Ray restart every one.
            f"max_restarts={args.kills + 2}",
            f"max_attempts={args.kills + 3}",
            "progress_interval_s=10",
        ]
        command.append(f"slots_per_actor={args.slots_per_actor}")
        logfile = open(os.path.join(args.workdir, f"driver-{name}.log"), "w")  # noqa: SIM115
        return subprocess.Popen(
            command,
            cwd=REPO,
            env={**self.env, **traced_env()},
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )


def _where(position: Any) -> dict[str, Any]:
    if position is None:
        return {}
    return {"conversation_id": position.conversation_id, "position": position.done}


def start_cluster() -> dict[str, str]:
    """Start this process's own local Ray; returns the environment for drivers joining it."""
    import ray

    # Workers and drivers import this checkout; loopback-only cluster without token auth,
    # so the driver subprocesses can join it.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    os.environ.update({"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled"})
    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    return dict(os.environ)
