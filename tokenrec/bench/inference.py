"""Batch-inference speed and memory per data set and engine -> ``docs/benchmarks/speed-inference.json``.

    python -m tokenrec.bench.inference --home ml100k=DIR --home beauty=DIR [--synthetic-home DIR]

Each ``--home`` is a TOKENREC_HOME with a registered champion and the published interactions snapshot of
``--ds`` (e.g. after ``tokenrec run --dataset ml100k --profile demo``). The synthetic set is built in
``--synthetic-home`` when it is not there yet: a power-law log (:mod:`tokenrec.data.synthetic`), a
demo-profile retrain on its first ``--synthetic-train-users`` users with the tiny random backbone (MiniLM
would need hours for a million prompts on a CPU), then the full log as a later snapshot, so almost every user
is folded in.

Every measurement is a fresh process running the real ``batch_inference`` task: users/s of the streaming
phase (recommend and write) and of the whole task, and peak RSS of the task process and of its process tree
(Spark's JVM and Python workers included). ``--gate`` also times ``validate_recommendations`` on the local
engine's output. The 1-minute load average is recorded around each run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tokenrec import schema
from tokenrec.bench.machine import RESULTS, write_result
from tokenrec.config import load_config
from tokenrec.storage import is_published

DS = "2026-11-27"
SYNTHETIC_TRAIN_DS = "2026-11-20"  # the synthetic retrain's snapshot; DS holds the full log
ENGINES = {  # name -> config overrides; "local" last, so that its output is the one left staged
    "spark_local[2]": ["inference.engine=spark", "spark.master=local[2]"],
    "local_1_thread": ["inference.torch_threads=1"],
    "local_bf16": ["llm.precision=bf16"],  # autocast to bf16 on the CPU (AVX512-BF16 where the CPU has it)
    "local": [],
}
SYNTHETIC_MODEL = ["llm.backbone=tiny-bert", "llm.lr=0.001", "llm.head_lr=0.003", "eval.baselines=[tokenrec]"]


def _rss_mb() -> tuple[float, float]:
    """RSS of this process, and of it with all its descendants (Spark's JVM and Python workers), in MiB."""
    try:
        import psutil
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        own = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        return own, own
    me = psutil.Process()
    own = me.memory_info().rss
    total = own
    for process in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
            total += process.memory_info().rss
    return own / 2**20, total / 2**20


def measure(home: str, ds: str, overrides: list[str]) -> dict[str, Any]:
    """Run ``batch_inference`` for ``ds`` in this process; timings, counts and peak memory.

    RSS is sampled every 0.2 s; the streaming peaks are those after the model is loaded and the fold-in is
    done (the task's ``durations_s`` say when), i.e. while users are recommended and rows written.
    """
    from tokenrec.tasks import batch_inference

    cfg = load_config(overrides=[f"paths.home={home}", "train.progress=false", *overrides])
    samples: list[tuple[float, float, float]] = []  # (time, own RSS, tree RSS)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), *_rss_mb()))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    sampler.start()
    summary = batch_inference.run(cfg, ds, None)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    durations = summary["durations_s"]
    streaming = durations["recommend_and_write"]
    from_streaming = [s for s in samples if s[0] >= started + durations["load_model"] + durations["prepare"]]
    result = {
        "active_users": summary["active_users"],
        "rows": summary["rows"],
        "k": summary["k"],
        "index_items": summary["index_items"],
        "fold_in": summary["fold_in"],
        "task_s": round(wall, 1),
        "durations_s": durations,
        "users_per_s": round(summary["active_users"] / streaming, 1),
        "users_per_s_whole_task": round(summary["active_users"] / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_tree_mb": round(max(s[2] for s in samples), 1),
        "peak_rss_streaming_mb": round(max((s[1] for s in from_streaming), default=0.0), 1),
        "peak_rss_tree_streaming_mb": round(max((s[2] for s in from_streaming), default=0.0), 1),
        "user_batch_size": cfg.inference.user_batch_size,
        "llm_batch_size": cfg.llm.eval_batch_size,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "date": _now(),
    }
    if "spark" in summary:
        result["spark"] = summary["spark"]
    return result


def measure_gate(home: str, ds: str) -> dict[str, Any]:
    """Run ``validate_recommendations`` on the staged output of ``ds`` in this process."""
    from tokenrec.tasks import validate_recommendations

    cfg = load_config(overrides=[f"paths.home={home}", "train.progress=false"])
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = validate_recommendations.run(cfg, ds, None)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "chunks": result["chunks"],
        "expectations": result["expectations"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gate_chunk_rows": cfg.inference.gate_chunk_rows,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "date": _now(),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _in_fresh_process(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m tokenrec.bench.inference <args>`` and parse the JSON line it prints last."""
    done = subprocess.run(
        [sys.executable, "-m", "tokenrec.bench.inference", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cli(home: Path, *args: str) -> None:
    """One ``tokenrec`` stage in a fresh process with ``home`` as TOKENREC_HOME."""
    env = {**os.environ, "TOKENREC_HOME": str(home)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tokenrec.cli", *args], env=env, check=True, capture_output=True)
    print(f"  {args[0]}: {time.perf_counter() - started:.0f} s", file=sys.stderr)


def prepare_synthetic(home: Path, n_users: int, n_items: int, train_users: int) -> dict[str, Any]:
    """The synthetic set in ``home``: a champion retrained on the first users, the full log at ``DS``."""
    from tokenrec.data.synthetic import SyntheticSpec, interaction_data, publish_snapshot

    lake = schema.Lake.at(home / "lake")
    spec = SyntheticSpec(n_users, n_items, chunk_users=train_users)  # train users = the first chunk
    described = {"spec": {k: v for k, v in vars(spec).items()}, "train_users": train_users,
                 "model": "demo profile with " + ", ".join(SYNTHETIC_MODEL)}  # fmt: skip
    if not is_published(lake.interactions(SYNTHETIC_TRAIN_DS)):
        print(f"retraining on the first {train_users} synthetic users in {home}", file=sys.stderr)
        train_spec = SyntheticSpec(**{**vars(spec), "n_users": train_users})
        publish_snapshot(lake, SYNTHETIC_TRAIN_DS, interaction_data(train_spec, progress=True))
        common = ["--ds", SYNTHETIC_TRAIN_DS, "--profile", "demo", "--run-id", "synthetic"]
        settings = [x for s in ["source.dataset=synthetic", *SYNTHETIC_MODEL] for x in ("--set", s)]
        for stage in ("train-gnn", "train-tokenizer", "train-llm", "evaluate", "register", "promote"):
            _cli(home, stage, *common, *settings)
    if not is_published(lake.interactions(DS)):
        publish_snapshot(lake, DS, interaction_data(spec, progress=True))
    return described


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", action="append", default=[], metavar="NAME=DIR", help="a data set's home")
    parser.add_argument("--ds", default=DS)
    parser.add_argument("--synthetic-home", help="where the synthetic set is (or is built)")
    parser.add_argument("--synthetic-users", type=int, default=1_000_000)
    parser.add_argument("--synthetic-items", type=int, default=20_000)
    parser.add_argument("--synthetic-train-users", type=int, default=20_000)
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument(
        "--gate", action="store_true", help="also time validate_recommendations (local output)"
    )
    parser.add_argument("--nightly", metavar="NAME", help="time the DAG's batch_inference job on this home")
    parser.add_argument("--out", default="speed-inference", help="result name under docs/benchmarks/")
    parser.add_argument("--merge", action="store_true", help="keep the other data sets of an earlier result")
    parser.add_argument("--note", action="append", default=[], metavar="NAME=TEXT", help="how a set was made")
    args = parser.parse_args(argv)

    homes = dict(h.split("=", 1) for h in args.home)
    results: dict[str, Any] = {}
    if args.synthetic_home:
        home = Path(args.synthetic_home)
        described = prepare_synthetic(
            home, args.synthetic_users, args.synthetic_items, args.synthetic_train_users
        )
        results["synthetic"] = described
        homes["synthetic"] = str(home)
    for name, home in homes.items():
        entry = results.setdefault(name, {})
        for engine in [e for e in ENGINES if e in args.engines]:
            print(f"{name}: {engine}", file=sys.stderr)
            entry[engine] = _in_fresh_process(["measure", home, args.ds, *ENGINES[engine]])
        if args.gate:
            entry["validate_recommendations"] = _in_fresh_process(["gate", home, args.ds])
    for name, text in (n.split("=", 1) for n in args.note):
        results.setdefault(name, {})["note"] = text
    if args.nightly:
        results[f"nightly_batch_inference_step_{args.nightly}"] = nightly_step(
            args.nightly, Path(homes[args.nightly]), args.ds
        )
    results["notes"] = (
        "users_per_s = active users / the task's recommend-and-write phase; users_per_s_whole_task includes "
        "loading the model from MLflow and fold-in. peak_rss_mb: the task process; peak_rss_tree_mb: with "
        "its children (Spark JVM and Python workers), sampled every 0.2 s; *_streaming_mb: the same peaks "
        "while recommending and writing (after model load, snapshot load and fold-in). Spark local[2] runs "
        "2 tasks at once, 1 torch thread each; local uses torch's default threads (all cores), "
        "local_1_thread one, local_bf16 autocasts the forward passes to bf16. Run under nice -n 5 on a "
        "shared machine: see load_average_1m and the date of each measurement; the top-level command lists "
        "every run merged."
    )
    command = "nice -n 5 python -m tokenrec.bench.inference " + " ".join(argv or sys.argv[1:])
    previous = RESULTS / f"{args.out}.json"
    if args.merge and previous.is_file():  # data sets measured in separate runs, one file
        earlier = json.loads(previous.read_text())
        merged = {**earlier["results"], **results}
        for name, entry in results.items():  # a data set's entries from both runs
            if isinstance(entry, dict) and isinstance(earlier["results"].get(name), dict):
                merged[name] = {**earlier["results"][name], **entry}
        results = merged
        command = f"{earlier['command']}; {command}"
    write_result(args.out, results, command=command)


def nightly_step(dataset: str, home: Path, ds: str) -> dict[str, Any]:
    """Wall time of the nightly DAG's ``batch_inference`` command (``python -m jobs.batch_inference``)."""
    command = [
        sys.executable,
        "-m",
        "jobs.batch_inference",
        "--ds",
        ds,
        "--dataset",
        dataset,
        "--profile",
        "demo",
    ]
    env = {**os.environ, "TOKENREC_HOME": str(home)}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2])
    return {
        "command": f"TOKENREC_HOME=<home> python -m jobs.batch_inference --ds {ds} --dataset {dataset} "
        "--profile demo",
        "wall_s": round(time.perf_counter() - started, 1),
        "target_s": 120,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "date": _now(),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4:])))
    elif sys.argv[1:2] == ["gate"]:
        print(json.dumps(measure_gate(sys.argv[2], sys.argv[3])))
    else:
        main()
