"""The ``tollmesh`` command line.

    tollmesh simulate [--config FILE|NAME] [--agents N] [--messages N] [--days D] [--seed S]
                      [--shards N] [--hosts N] [--batch-size N] [--fsync always|batch|never]
                      [--name NAME] [--out DIR] [--overwrite] [--address ADDRESS] [--dashboard]
                      [--json] [--no-progress] [--no-plots]
    tollmesh simulate --resume RUN_DIR [--address ADDRESS] [--dashboard]
    tollmesh demo [--agents N] [--messages N] [--seed S] [--out DIR] [--json]
    tollmesh ledger report  LEDGER [--json] [--top N]
    tollmesh ledger verify  LEDGER [--json]
    tollmesh ledger export  LEDGER --format csv|json|parquet --out FILE
    tollmesh ledger settle  LEDGER [--minimum USD] [--live] [--chain memory | --facilitator URL]
    tollmesh ledger plot    LEDGER [--out DIR]
    tollmesh ledger compact LEDGER [--out DIR]
    tollmesh bench [--quick] [--json PATH] [--plot PATH] [--readme JSON] [--address ADDRESS] [sweeps...]   (see benchmarks/)
    tollmesh cluster init [--provider local|aws|gcp] [--head-ip IP --worker-ips IP,... --ssh-user USER] [--out FILE]
    tollmesh cluster grafana [--out FILE]
    tollmesh serve [--host H] [--port P] [--out DIR] [--pay-to ADDRESS] [--agent ID=module:Class]...
                   [--paper | --facilitator URL] [--wallet-daily-cap USD] [--max-body-bytes N] [--timeout S]
    tollmesh pay URL [--data JSON] [--key HEX] [--replay] [--json]

LEDGER is a JSONL ledger (its first file, or the directory holding it); ``report``,
``export`` and ``plot`` also read a Parquet dataset directory. Output directories are
created as needed (``export`` creates the folder of its ``--out`` file too). A bad path
(a file where a directory must be, a folder that cannot be made or read) is answered
with one line on stderr and exit code 2, never a traceback; so is Ray's failure (no cluster at
``--address``, a cluster that goes away mid-run, an actor dead for good), with exit code 3.
``simulate`` says in one line which Ray it uses (one of its own unless told to join one). As a Ray
job's entrypoint (``ray job submit ... -- tollmesh simulate --out /data/runs``) it names its run
directory whole, on which node, shows no progress bar, and refuses a run directory inside the copy of
``--working-dir`` that Ray deletes after the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import orjson

from mesh.demo import format_report, run_demo
from mesh.core.errors import InvalidArgumentError, RayUnavailableError, TollmeshError
from mesh.core.money import format_usd
from mesh.booth.settlement import DEFAULT_MINIMUM_USD, settle

DEFAULT_OUT_DIR = Path("tollmesh-out")
DEFAULT_MAX_PROBLEMS = 20  # problems `ledger verify` lists before it counts the rest


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; its exit code. Output cut short by its reader (``| head``) ends it quietly:
    exit code 141 (as a process killed by SIGPIPE), no traceback."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, so a closed pipe is seen now rather than at exit
    except BrokenPipeError:
        return _stdout_closed()


EXIT_PIPE_CLOSED = 141


def _stdout_closed() -> int:
    """The reader of stdout went away: point stdout at /dev/null so nothing more fails on it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_PIPE_CLOSED


def _run(argv: Optional[list[str]]) -> int:
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except BrokenPipeError:
        raise
    except RayUnavailableError as exc:  # Ray could not be started or reached, or went away
        print(f"tollmesh: error: {exc}", file=sys.stderr)
        return 3
    except TollmeshError as exc:
        print(f"tollmesh: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the system refused (permissions, a full disk...): named, in one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tollmesh: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Ray's own errors (an actor that died for good...): one line, no traceback
        message = _ray_problem(exc)
        if message is None:
            raise
        print(f"tollmesh: error: {message}", file=sys.stderr)
        return 3


def _ray_problem(exc: BaseException) -> Optional[str]:
    """What went wrong, when Ray raised ``exc`` (None otherwise); Ray is imported only if it is loaded."""
    if "ray" not in sys.modules:
        return None
    from ray.exceptions import RayError

    from mesh.ray_session import explain_ray_error

    return explain_ray_error(exc) if isinstance(exc, RayError) else None


def _out_dir(flag: str, path: Path, given: Optional[Path] = None) -> Path:
    """``path`` if it is, or can be made, a directory; else a clear error (it, or a folder above it, is a file)."""
    for at in (path, *path.parents):
        if at.exists():
            if not at.is_dir():
                raise InvalidArgumentError(flag, str(given or path), f"{at} is a file, not a directory")
            break
    return path


def _out_file(flag: str, path: Path) -> Path:
    """``path`` if a file can be written there (its folder is made if missing); else a clear error."""
    if path.is_dir():
        raise InvalidArgumentError(flag, str(path), "is a directory: give a file name")
    _out_dir(flag, path.parent, path)
    return path


def _print_json(value: object) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _cmd_simulate(args: argparse.Namespace) -> int:
    from mesh.scenario import load_scenario
    from mesh.simulate import RunDirTaken, Simulation

    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k in _SCENARIO_FLAGS if getattr(args, k) is not None]
        given += ["--config"] * (args.config != "default") + ["--overwrite"] * args.overwrite
        if given:
            print(f"tollmesh: error: --resume plays the run's own scenario: drop {', '.join(given)}", file=sys.stderr)
            return 2
        run_dir = _in_a_job(args.resume)
        return _finish(Simulation.resume(run_dir, progress=_progress(args), plots=not args.no_plots,
                                         address=args.address, dashboard=args.dashboard,
                                         on_ray_lost=_ray_lost(run_dir.absolute())).run, args)
    scenario = load_scenario(args.config).scaled(
        agents=args.agents, messages=args.messages, days=args.days, seed=args.seed, shards=args.shards,
        hosts=args.hosts, batch_size=args.batch_size, ledger_fsync=args.fsync, name=args.name,
        partitioned_ledger=args.partitioned_ledger,
    )
    run_dir = _in_a_job(_out_dir("--out", args.out) / f"{scenario.name}-seed{scenario.seed}")
    simulation = Simulation(scenario, run_dir, overwrite=args.overwrite, progress=_progress(args),
                            plots=not args.no_plots, address=args.address, dashboard=args.dashboard,
                            on_ray_lost=_ray_lost(run_dir.absolute()))
    try:
        return _finish(simulation.run, args)
    except RunDirTaken as exc:
        print(f"tollmesh: error: {exc.explain(_command_line(_argv_of(args)))}", file=sys.stderr)
        return 2


def _progress(args: argparse.Namespace) -> bool:
    """The progress bar: on, unless asked not to, or in a Ray job (its log would keep every redraw)."""
    from mesh.ray_job import current_job

    return not (args.no_progress or args.json or current_job() is not None)


def _in_a_job(run_dir: Path) -> Path:
    """``run_dir``, made absolute when this is a Ray job's entrypoint (so the job's log names it whole),
    and refused if it lies in the copy of ``--working-dir`` Ray deletes after the job; said in one line."""
    import socket

    from mesh.ray_job import check_run_dir, current_job

    job = current_job()
    if job is None:
        return run_dir
    run_dir = run_dir.absolute()
    check_run_dir(run_dir, job)
    print(f"tollmesh: ray job {job.submission_id}: the run directory is {run_dir} on {socket.gethostname()}"
          " (the node this entrypoint runs on: the head, unless the submission asked for another)", file=sys.stderr)
    return run_dir


def _ray_lost(run_dir: Path) -> Callable[[str], None]:
    """What the command does when its Ray cluster goes away mid-run: says so in one line, and exits 3
    at once (Ray's driver would end the process a minute later without a word)."""
    import os
    import shlex

    def lost(problem: str) -> None:
        print(f"\ntollmesh: error: {problem}; the run stopped: what it wrote is in {run_dir}, resumable with "
              f"`tollmesh simulate --resume {shlex.quote(str(run_dir))}`", file=sys.__stderr__, flush=True)
        os._exit(3)

    return lost


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The arguments this command was run with (``main(argv)``'s, else the process's)."""
    return list(getattr(args, "argv", None) or sys.argv[1:])


def _command_line(argv: list[str]) -> str:
    """``tollmesh ...`` as the user typed it, quoted for a shell."""
    import shlex

    return shlex.join(["tollmesh", *argv])


_SCENARIO_FLAGS = ("agents", "messages", "days", "seed", "shards", "hosts", "batch_size", "fsync", "name",
                   "partitioned_ledger")


def _finish(run: Callable[[], dict], args: argparse.Namespace) -> int:
    """Run a simulation and print its report; the exit code: 0 if its checks pass, 1 if not, 130 if interrupted.

    While it runs, whatever Ray prints (a dead worker's notice, say) goes to stderr: stdout holds the report only.
    """
    from mesh.sim_report import checks_pass, format_report

    with contextlib.redirect_stdout(sys.stderr):
        report = run()

    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
    if report["run"]["interrupted"]:
        return 130
    return 0 if checks_pass(report) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    run_dir = _out_dir("--out", args.out) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}-seed{args.seed}"
    if run_dir.exists():
        print(f"tollmesh: error: {run_dir} already exists", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = run_demo(run_dir, agents=args.agents, messages=args.messages, seed=args.seed)
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    (run_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
        print(f"elapsed:           {report['elapsed_s']} s  (report: {run_dir / 'report.json'})")
    return 0 if report["replay_matches_live"] and report["conservation_holds"] and report["ledger_verifies"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from ledger.report import build_report, format_report as format_ledger_report, read_table

    report = build_report(read_table(args.ledger), top=args.top)
    _print_json(report) if args.json else print(format_ledger_report(report))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ledger.verify import verify

    result = verify(args.ledger)
    shown = args.max_problems or None  # 0: all
    if args.json:
        _print_json({
            "ok": result.ok, "not_a_ledger": result.not_a_ledger, "files": [str(p) for p in result.files],
            "events": result.events, "partition_events": result.partition_events, "open_escrows": result.open_escrows,
            "problem_count": len(result.problems), "problems": [str(p) for p in result.problems[:shown]],
            "warning_count": len(result.warnings), "warnings": [str(w) for w in result.warnings[:shown]],
        })
        return 0 if result.ok else 1
    if result.not_a_ledger:
        print(f"{args.ledger}: {result.not_a_ledger}")
        shown = min(shown or 3, 3)  # a few lines, to show what it holds instead
    else:
        print(f"files:         {len(result.files)}  events: {result.events:,}  open escrows: {result.open_escrows:,}")
        if len(result.partition_events) > 1:
            print(f"partitions:    {len(result.partition_events)} (events: {', '.join(f'{n:,}' for n in result.partition_events)})")
    _print_bounded("warning", result.warnings, shown)
    _print_bounded("PROBLEM", result.problems, shown)
    if result.not_a_ledger:
        print("INTEGRITY: NOT A TOLLMESH LEDGER")
    else:
        print("INTEGRITY: OK" if result.ok else f"INTEGRITY: {len(result.problems):,} PROBLEM(S)")
    return 0 if result.ok else 1


def _print_bounded(label: str, findings: list, shown: Optional[int]) -> None:
    """The first ``shown`` findings (all if None), then how many more there are."""
    for finding in findings[:shown]:
        print(f"{label}: {finding}")
    if shown is not None and len(findings) > shown:
        print(f"... and {len(findings) - shown:,} more {label.lower()}(s) (--max-problems 0 lists them all)")


def _cmd_export(args: argparse.Namespace) -> int:
    from ledger.export import export

    count = export(args.ledger, _out_file("--out", args.out), args.format)
    print(f"wrote {count} events to {args.out}")
    return 0


def _cmd_settle(args: argparse.Namespace) -> int:
    from ledger.payments import decode_payment
    from ledger.verify import LedgerVerifyError

    try:
        if args.chain or args.facilitator or _holds_payments(args.ledger, decode_payment):
            return _settle_with_payments(args)
        result = settle(args.ledger, paper=not args.live, minimum_usd=args.minimum)
    except LedgerVerifyError as exc:  # a ledger that fails verify is never settled, and nothing is written
        print(f"tollmesh: settle refused: {exc}", file=sys.stderr)
        return 1
    return _print_netting(result)


def _print_netting(result) -> int:
    if result.settled:
        print(f"SETTLED {result.batch_id}: {result.call_count} call(s) netted to ${format_usd(result.net_micros)} ({result.mode} mode)")
        print(f"record: {result.settlements_path}")
        return 0
    print(f"no settlement: {result.reason} ({result.call_count} pending call(s), net ${format_usd(result.net_micros)})")
    return 1


def _holds_payments(ledger: Path, decode) -> bool:
    """Whether any event of the ledger carries an x402 payment (a quick scan; the settle verifies properly)."""
    from ledger.partitions import families
    from ledger.reader import iter_lines

    try:
        ledger_files = families(ledger)
    except TollmeshError:
        return False
    return any(line.event is not None and decode(line.event.get("tx_signature")) is not None
               for files in ledger_files for line in iter_lines(files))


def _settle_with_payments(args: argparse.Namespace) -> int:
    """Settle the released, x402-paid calls by their own payments, and net the rest (see mesh.x402.settle)."""
    from mesh.x402.settle import PaymentSettler, PaymentsLog, settle_ledger

    facilitator = None
    if args.chain or args.facilitator:
        facilitator = _settling_facilitator(args)
    settler = PaymentSettler(PaymentsLog(args.ledger), facilitator)
    outcome = settle_ledger(args.ledger, settler, paper_netting=not args.live, minimum_usd=args.minimum)
    print(f"by payment:  {outcome.paid_released} released call(s) paid with signed x402 payments "
          f"(${format_usd(outcome.by_payment_micros)}): {len(outcome.settled_now)} settled now via {outcome.via}, "
          f"{outcome.settled_before} settled before, {len(outcome.failed)} failed; "
          f"{outcome.refunded_paid} refunded paid call(s) never settled")
    for failed in outcome.failed[:DEFAULT_MAX_PROBLEMS]:
        print(f"  not settled: {failed['task_id']}: {failed['error_reason']}")
    if outcome.via == "paper" and outcome.settled_now:
        print("  (paper mode: structural checks only, no funds moved; --chain memory or --facilitator URL settles)")
    print(f"record:      {settler.log.path}")
    print("by netting:  ", end="")
    netting = _print_netting(outcome.netting)
    return 0 if outcome.ok and (netting == 0 or outcome.netting.call_count == 0) else 1


def _settling_facilitator(args: argparse.Namespace):
    """The facilitator ``ledger settle`` settles payments through: the in-memory chain, or an operator's."""
    from mesh.x402.settle import terms_of_ledger

    terms = terms_of_ledger(args.ledger)
    if args.facilitator:
        from mesh.x402.facilitator import HttpFacilitator

        return HttpFacilitator(args.facilitator, terms, timeout_s=args.facilitator_timeout)
    from mesh.core.money import usd_to_micros
    from mesh.x402.chain import InMemoryChain
    from mesh.x402.facilitator import LocalFacilitator

    return LocalFacilitator(InMemoryChain(terms, default_balance_micros=usd_to_micros(args.chain_balance)))


def _cmd_serve(args: argparse.Namespace) -> int:
    from mesh.x402.serve import ServeOptions, serve

    agents = {}
    for spec in args.agent or []:
        agent_id, sep, target = spec.partition("=")
        if not sep or not agent_id or not target:
            raise InvalidArgumentError("--agent", spec, "must be ID=package.module:Class")
        agents[agent_id] = target
    options = ServeOptions(
        host=args.host, port=args.port, out_dir=args.out, pay_to=args.pay_to, network=args.network, agents=agents,
        paper=args.paper, free=args.no_payment, facilitator_url=args.facilitator, facilitator_timeout_s=args.facilitator_timeout,
        chain_balance_usd=args.chain_balance, wallet_daily_cap_usd=None if args.wallet_daily_cap in ("none", "0") else args.wallet_daily_cap,
        max_body_bytes=args.max_body_bytes, timeout_s=args.timeout, address=args.address,
    )
    return serve(options)


def _cmd_pay(args: argparse.Namespace) -> int:
    from mesh.x402.pay import pay
    from mesh.x402.serve import DEMO_PAYER_NAME, demo_key

    try:
        payload = orjson.loads(args.data) if args.data is not None else None
    except orjson.JSONDecodeError:
        raise InvalidArgumentError("--data", args.data, "must be JSON (a string is quoted: '\"hi\"')") from None
    key_hex = args.key or os.environ.get("TOLLMESH_PAYER_KEY")
    try:
        key = bytes.fromhex(key_hex.removeprefix("0x")) if key_hex else demo_key(DEMO_PAYER_NAME)
    except ValueError:
        raise InvalidArgumentError("--key", "<hidden>", "must be 32 bytes of hex") from None
    try:
        outcome = pay(args.url, payload, key=key, replay=args.replay)
    except Exception as exc:  # noqa: BLE001 - no gateway there, a refused connection, a client error: one line
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpcore", "x402"):
            raise
        print(f"tollmesh: error: {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json({"payer": outcome.payer, "status": outcome.status, "body": outcome.body,
                     "payment_response": outcome.settlement, "replay_status": outcome.replay_status,
                     "replay_body": outcome.replay_body})
    else:
        print(f"payer:    {outcome.payer}" + ("  (the demo payer: give --key or TOLLMESH_PAYER_KEY)" if not key_hex else ""))
        print(f"status:   {outcome.status}")
        print(f"body:     {orjson.dumps(outcome.body).decode()}")
        if outcome.settlement is not None:
            s = outcome.settlement
            print(f"payment:  settled={s.get('success')} transaction={s.get('transaction') or '-'} "
                  f"network={s.get('network')} amount={s.get('amount', '-')}")
        if outcome.replay_status is not None:
            body = outcome.replay_body if isinstance(outcome.replay_body, dict) else {}
            print(f"replay:   the same PAYMENT-SIGNATURE again -> {outcome.replay_status} "
                  f"{body.get('error', outcome.replay_body)}: {body.get('detail', '')}")
    if outcome.status != 200:
        return 1
    return 0 if outcome.replay_status in (None, 402) else 1


def _cmd_plot(args: argparse.Namespace) -> int:
    """Draw the charts; without ``--out``, into ``plots/`` beside the ledger unless it holds charts
    already (a run's own): then into the first free ``plots-2/``, ``plots-3/``..., said."""
    from ledger.plot import plot

    if args.out:
        out = _out_dir("--out", args.out)
    else:
        default = _beside(args.ledger, "plots")
        out = _free_plot_dir(default)
        if out != default:
            print(f"{default} holds plots already: writing to {out} instead (--out DIR to choose)")
    for path in plot(args.ledger, out, **_run_context(args.ledger)):
        print(f"wrote {path}")
    return 0


def _free_plot_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``...: the first that holds no PNG (a file there is an error later)."""
    candidate, n = path, 1
    while candidate.is_dir() and any(candidate.glob("*.png")):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _run_context(ledger: Path) -> dict:
    """What the charts of a simulation's ledger should say (its run, scenario and seed) and its tick, read
    from the run's ``run.json`` (beside the ledger, or above its Parquet dataset); nothing for another ledger."""
    from mesh.core.errors import ConfigError
    from mesh.sim_progress import RUN_FILE, load_run
    from mesh.sim_report import run_about, tick_s

    folder = ledger if ledger.is_dir() else ledger.parent
    for run_dir in (folder, folder.parent):
        if (run_dir / RUN_FILE).is_file():
            try:
                scenario = load_run(run_dir)
            except ConfigError:
                return {}
            return {"about": run_about(scenario, run_dir), "tick_s": tick_s(scenario), "start_s": scenario.start_s,
                    "end_s": scenario.start_s + scenario.days * 86_400,
                    "time_label": "simulated time (UTC)"}
    return {}


def _cmd_compact(args: argparse.Namespace) -> int:
    from ledger.export import compact

    out = _out_dir("--out", args.out) if args.out else _beside(args.ledger, "parquet")
    files = compact(args.ledger, out)
    print(f"wrote {len(files)} Parquet file(s) under {out}")
    return 0


def _beside(ledger: Path, name: str) -> Path:
    return (ledger if ledger.is_dir() else ledger.parent) / name


def _positive_int(text: str) -> int:
    """A count of at least 1 (argparse names the flag in front of the error)."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _whole_number(text: str) -> int:
    """A whole number such as 7 or -3, or an error that says so (not argparse's ``invalid int value``)."""
    try:
        return int(text)  # 7, -3, 10_000
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _days(text: str) -> float:
    """A number of simulated days (a fraction is allowed: 0.5 is half a day); the scenario checks its range."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days such as 3 or 0.5, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    from mesh import __version__

    parser = argparse.ArgumentParser(prog="tollmesh", description="Agents that pay each other per call, through escrow.")
    parser.add_argument("--version", action="version", version=f"tollmesh {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub.add_parser("simulate", help="run a multi-agent economy on the mesh (Ray) and report on it"))
    demo = sub.add_parser("demo", help="run a seeded in-process economy and print its report")
    demo.add_argument("--agents", type=_whole_number, default=50, help="number of agents (at least 2; default 50)")
    demo.add_argument("--messages", type=_positive_int, default=20_000, help="calls the demo makes (default 20000)")
    demo.add_argument("--seed", type=_whole_number, default=7,
                      help="the run's seed: the same seed gives the same calls and outcomes (default 7)")
    demo.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="runs go to OUT/demo-<time>-seed<S>/")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(func=_cmd_demo)
    _ledger_parser(sub.add_parser("ledger", help="tools over a ledger: report, verify, export, settle, plot, compact"))
    _cluster_parser(sub.add_parser("cluster", help="on a Ray cluster: write a `ray up` YAML (init), a Grafana dashboard"))
    _bench_parser(sub.add_parser("bench", help="the seed's booth, ours and the mesh side by side, with sweeps (JSON, PNG)"))
    _serve_parser(sub.add_parser("serve", help="serve the mesh's agents over HTTP 402 to x402 clients (uvicorn)"))
    _pay_parser(sub.add_parser("pay", help="pay an x402 URL with the official x402 client (and show a replay refused)"))
    return parser


def _cluster_parser(p: argparse.ArgumentParser) -> None:
    from mesh.cluster.command import add_arguments

    add_arguments(p)


def _serve_parser(p: argparse.ArgumentParser) -> None:
    from mesh.x402.serve import DEFAULT_OUT, DEFAULT_PORT

    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=DEFAULT_PORT, help=f"the port (default {DEFAULT_PORT})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"the run directory, kept across restarts: its ledger remembers spent payments (default {DEFAULT_OUT})")
    p.add_argument("--pay-to", help="the address payments go to (default: a demo payee)")
    p.add_argument("--network", default="eip155:84532", help="the CAIP-2 network of the quotes (default eip155:84532, Base Sepolia)")
    p.add_argument("--agent", action="append", metavar="ID=module:Class",
                   help="expose an agent (a mesh.Agent subclass, found from the current folder); repeatable "
                        "(default: the demo agents echo and summarize)")
    p.add_argument("--paper", action="store_true", help="paper mode: structural checks only, nothing settled (said so)")
    p.add_argument("--facilitator", metavar="URL", help="verify and settle through the facilitator at URL (fails closed)")
    p.add_argument("--facilitator-timeout", type=float, default=5.0, help="seconds a facilitator request may take (default 5)")
    p.add_argument("--no-payment", action="store_true",
                   help="payment off: calls go through escrow unpaid (the benchmarks' baseline; never expose it)")
    p.add_argument("--chain-balance", default="10", help="USD every wallet holds on the in-memory chain (default 10)")
    p.add_argument("--wallet-daily-cap", default="1.00", help="USD a payer wallet may spend a day here, or none (default 1.00)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=64 * 1024, help="largest request body (default 65536)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds an agent may take for a call (default 30)")
    p.add_argument("--address", metavar="ADDRESS", help="join the Ray cluster at ADDRESS (e.g. auto) instead of a local Ray")
    p.set_defaults(func=_cmd_serve)


def _pay_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the paid URL, e.g. http://127.0.0.1:8402/agents/echo")
    p.add_argument("--data", help="the JSON payload to POST (default: none)")
    p.add_argument("--key", help="the payer's private key, hex (default: $TOLLMESH_PAYER_KEY, else a demo key)")
    p.add_argument("--replay", action="store_true", help="then send the same PAYMENT-SIGNATURE again (it must be refused)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=_cmd_pay)


def _bench_parser(p: argparse.ArgumentParser) -> None:
    from benchmarks.plan import add_arguments  # argparse only: the bench itself is imported when it runs

    add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.command import run

    return run(args)


def _simulate_parser(p: argparse.ArgumentParser) -> None:
    from mesh.scenario import builtin_scenarios

    p.add_argument("--config", default="default",
                   help=f"a scenario TOML file, or a built-in scenario: {', '.join(builtin_scenarios())} (default: default)")
    p.add_argument("--agents", type=_positive_int, help="scale every group so the agents sum to about N")
    p.add_argument("--messages", type=_positive_int, help="calls the simulation makes (pipelines add their own)")
    p.add_argument("--days", type=_days, help="simulated days the run spans (caps roll over each day)")
    p.add_argument("--seed", type=_whole_number, help="the run's seed: the same seed gives the same calls and outcomes")
    p.add_argument("--shards", type=_positive_int, help="budget shard actors")
    p.add_argument("--hosts", type=_positive_int, help="host actors the light agents are spread over")
    p.add_argument("--batch-size", type=_positive_int, help="most calls in one tick's batch")
    p.add_argument("--fsync", choices=["always", "batch", "never"], help="ledger fsync policy (default: batch)")
    ledger_kind = p.add_mutually_exclusive_group()
    ledger_kind.add_argument("--partitioned-ledger", action="store_const", const=True, dest="partitioned_ledger",
                             help="a ledger partition and writer per shard (shard=K/), so no one writer takes every "
                                  "event (the default with two shards or more)")
    ledger_kind.add_argument("--one-ledger", action="store_const", const=False, dest="partitioned_ledger",
                             help="one ledger and one writer for every shard's events")
    p.add_argument("--name", help="the run's name (default: the scenario's); output goes to OUT/NAME-seedS/")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="runs go to OUT/<name>-seed<S>/ (default ./tollmesh-out)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the same directory")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="finish the run in RUN_DIR (interrupted, or its driver killed) from its ledger, with its own scenario")
    p.add_argument("--address", metavar="ADDRESS",
                   help="join the Ray cluster at ADDRESS (host:port, or auto) instead of starting a local Ray "
                        "(default: RAY_ADDRESS if set, else a local Ray of its own)")
    p.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard with the local Ray and print its address (the run's metrics are there)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=_cmd_simulate)


def _ledger_parser(ledger: argparse.ArgumentParser) -> None:
    tools = ledger.add_subparsers(dest="tool", required=True)

    def tool(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = tools.add_parser(name, help=help_text)
        p.add_argument("ledger", type=Path, help="the JSONL ledger (file or directory)")
        p.set_defaults(func=func)
        return p

    report = tool("report", "calls, spend, by status, reason, agent and edge", _cmd_report)
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--top", type=_positive_int, default=10, help="how many payers, earners and edges to list (default 10)")
    verify = tool("verify", "schema, hash chain, sequence, transitions, conservation (exit 1 on a problem)", _cmd_verify)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--max-problems", type=_whole_number, default=DEFAULT_MAX_PROBLEMS, metavar="N",
                        help=f"list at most N problems and N warnings, then how many more (0: all; default {DEFAULT_MAX_PROBLEMS})")
    export = tool("export", "write the events as CSV, JSON or Parquet", _cmd_export)
    export.add_argument("--format", choices=["csv", "json", "parquet"], required=True, help="the output format")
    export.add_argument("--out", type=Path, required=True, help="the file to write (its folder is made if missing)")
    settle_p = tool("settle", "net released, unsettled tolls into one batch (paper mode)", _cmd_settle)
    settle_p.add_argument("--minimum", default=DEFAULT_MINIMUM_USD, help="minimum net USD to settle (default 0.50)")
    settle_p.add_argument("--live", action="store_true", help="live netting (fails closed: wire your own rail)")
    settle_p.add_argument("--chain", choices=["memory"], help="settle x402-paid calls on the in-memory chain (demo)")
    settle_p.add_argument("--facilitator", metavar="URL", help="settle x402-paid calls through the facilitator at URL")
    settle_p.add_argument("--facilitator-timeout", type=float, default=5.0, help="seconds a facilitator request may take")
    settle_p.add_argument("--chain-balance", default="10", help="USD every wallet holds on the in-memory chain (default 10)")
    plot = tool("plot", "PNG charts: spend over time, top payers and earners, status and reason mix", _cmd_plot)
    plot.add_argument("--out", type=Path, default=None,
                      help="the folder to draw into (default: plots/ beside the ledger, or plots-2/... if it holds plots)")
    compact = tool("compact", "rebuild the day-partitioned Parquet dataset from the JSONL", _cmd_compact)
    compact.add_argument("--out", type=Path, default=None, help="default: parquet/ beside the ledger")


if __name__ == "__main__":
    sys.exit(main())
