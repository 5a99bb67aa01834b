"""The ``deepcmb`` command line, built from the table of stages (:mod:`deepcmb.stages`).

Every stage subcommand has the same pattern::

    deepcmb STAGE [--config FILE] INPUTS --out OUT [OPTIONS] [--overwrite] [--quiet]

``--config`` reads the stage's section of a YAML file; for a stage whose schema leaves are options
(``reconstruct``, ``figures``) every leaf is also an option (``--batch-size 16``) that overrides the
file. The inputs are named alike in every stage (``--sims``, ``--qe``, ``--model``, ``--rec``,
``--report``, ``--chains``); older names (``--data``) are kept as aliases. A subcommand's options are
built from its schema only when it runs, so the command starts without importing the other stages.

Status lines and the periodic progress of long stages are log records of the ``deepcmb`` loggers,
shown on stderr with a timestamp (:mod:`deepcmb.progress`); stdout holds the result (``wrote OUT``,
or ``deepcmb run``'s lines per stage). Errors a user can cause print one line ``deepcmb <stage>:
error: <message>`` and exit with code 2, without a traceback; so does a second command on an output
that another one is writing (:mod:`deepcmb.io.lock`). SIGTERM and SIGINT print one line ``deepcmb
<stage>: interrupted (SIGTERM); re-run the same command to resume`` and exit with code 143 or 130
(:mod:`deepcmb.interrupts`). ``deepcmb train --time-limit`` stopping before its last epoch prints one
line and exits with code 75, the run resumable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import yaml

from .config import Bool, ListOf, OneOf, Str, leaves, load_yaml, option_name, override, set_value
from .errors import ConfigError, DeepCMBError, InputError
from .interrupts import Interrupted, TimeLimitReached, interruptible
from .progress import INTERVAL_S
from .stages import Stage, commands

OPTIONS = {
    "workers": {"type": int, "help": "local worker processes (default: one per core this process may use)"},
    "scheduler": {"help": "Dask distributed scheduler address (tcp://host:port)"},
    "scheduler_file": {"metavar": "FILE", "help": "Dask scheduler file (dask scheduler --scheduler-file FILE)"},
    "time_limit": {"type": float, "metavar": "MINUTES",
                   "help": "stop after the epoch in which MINUTES of wall time have passed, checkpointed: exit 75, "
                           "and the same command continues (a batch job's limit less a margin)"},
    "shard": {"metavar": "K/N", "help": "make only the K-th of N shares of the work (e.g. one task of an array job) "
                                        "into OUT.partial/; a call without --shard then assembles OUT"},
}
"""Execution options a stage may take besides its config (they do not change its output)."""


def _value(text: str, leaf):
    """A command-line string as the YAML value it spells (``'300'`` -> 300, ``'null'`` -> None); a list
    leaf takes comma-separated entries."""
    if isinstance(leaf, ListOf):
        return [yaml.safe_load(t) for t in text.split(",") if t.strip()]
    return text if isinstance(leaf, Str) else yaml.safe_load(text)


def _leaf_help(leaf, default) -> str:
    text = leaf.doc or leaf.describe()
    return f"{text} (default {default})" if default is not None and not isinstance(leaf, Bool) else text


def _add_stage_arguments(p: argparse.ArgumentParser, stages: list[Stage]) -> None:
    """The options of one subcommand: ``--method`` (several stages), inputs, ``--out``, ``--config``,
    schema leaves, execution options, ``--overwrite``, ``--quiet``."""
    if len(stages) > 1:
        p.add_argument("--method", required=True, choices=[s.method for s in stages],
                       help="; ".join(f"{s.method}: {s.summary}" for s in stages))
    seen = {}
    for s in stages:
        for i in s.inputs:
            seen.setdefault(i.flag, (i, []))[1].append(s)
    for flag, (i, users) in seen.items():
        required = i.required and len(users) == len(stages)
        help_ = i.help + ("" if len(users) == len(stages) else f" ({', '.join(f'--method {u.method}' for u in users)})")
        if i.labelled:
            p.add_argument(flag, *i.aliases, dest=i.name, required=required, action="append", metavar="LABEL=FILE",
                           help=help_)
        else:
            p.add_argument(flag, *i.aliases, dest=i.name, required=required, default=None, help=help_)
    p.add_argument("--out", required=True, help="output " + ("file" if stages[0].output == "file" else "folder"))
    sections = [s for s in stages if s.section is not None]
    if sections:
        where = "the whole file" if sections[0].section == "" else f"its {sections[0].section}: section"
        p.add_argument("--config", required=len(stages) == 1 and stages[0].config_required,
                       help=f"YAML config; {where} is used (see the presets in sims/, train/, evaluate/)")
    flags = {}
    for s in stages:
        if s.flags:
            for name, leaf in leaves(s.load_schema()):
                flags.setdefault(option_name(name), []).append((s, name, leaf))
    for flag, uses in flags.items():
        leaf = uses[0][2]
        defaults = [(s, lf.default) for s, _, lf in uses]
        if len({lf.doc or lf.describe() for _, _, lf in uses}) > 1:  # one meaning per method: say each
            help_ = "; ".join(f"{s.method}: {_leaf_help(lf, lf.default)}" for s, _, lf in uses)
        elif len(uses) == len(stages) == 1 or len({repr(d) for _, d in defaults}) == 1:
            help_ = _leaf_help(leaf, defaults[0][1])
        else:
            help_ = (leaf.doc or leaf.describe()) + " (" + "; ".join(f"{s.method}: default {d}" for s, d in defaults) \
                + ")"
        if len(stages) > 1 and len(uses) < len(stages):
            help_ += " (" + ", ".join(f"--method {u[0].method}" for u in uses) + ")"
        kw = {"dest": "leaf:" + flag, "default": argparse.SUPPRESS, "help": help_}
        if isinstance(leaf, Bool):
            p.add_argument(flag, action="store_const", const=True, **kw)
        elif isinstance(leaf, OneOf):
            p.add_argument(flag, choices=[str(c) for c in leaf.choices], **kw)
        else:
            p.add_argument(flag, metavar=flag[2:].upper().replace("-", "_"), **kw)
    for name in dict.fromkeys(o for s in stages for o in s.options):
        p.add_argument(option_name(name), dest=name, default=None, **OPTIONS[name])
    if any(s.section is not None for s in stages):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one value of the config (a dotted key inside its section, a YAML value), "
                            "e.g. --set jackknife=10; repeat for several")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress records")
    p.set_defaults(func=partial(_run_stage, stages, flags))


def _section(path: str, section: str) -> dict:
    """The section (dotted path, ``''``: the whole file) of a YAML file; a file without it is refused."""
    data = load_yaml(path)
    for key in filter(None, section.split(".")):
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{path}: no '{section}:' section")
        data = data[key]
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: {section}: expected a mapping, got {data!r}")
    return data or {}


def _labelled(items: list[str] | None, flag: str) -> dict:
    """``['nn=a.h5', 'qe=b.h5']`` -> ``{'nn': 'a.h5', 'qe': 'b.h5'}``."""
    out = {}
    for item in items or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"{flag} {item}: expected LABEL=FILE, e.g. nn=rec_nn.h5")
        if label in out:
            raise ConfigError(f"{flag} {item}: label {label!r} given twice")
        out[label] = path
    return out


def _check_files_exist(inputs: dict) -> None:
    """Refuse a missing input file before the stage is imported (a network stage imports its backend, which
    takes seconds and prints its start-up lines). A model may be a name, so it is the stage's to check."""
    for name, value in inputs.items():
        for path in (value.values() if isinstance(value, dict) else [value]):
            if name != "model" and not Path(path).exists():
                raise InputError(f"{path}: no such file")


def _run_stage(stages: list[Stage], flags: dict, args: argparse.Namespace) -> None:
    stage = stages[0] if len(stages) == 1 else next(s for s in stages if s.method == args.method)
    given = {flag: v for flag, v in vars(args).items() if flag.startswith("leaf:")}
    owners: dict[str, list[str]] = {}  # a given option of other methods only -> those methods
    for flag in given:
        if not any(s is stage for s, _, _ in flags[flag[5:]]):
            owners[flag[5:]] = [s.method for s, _, _ in flags[flag[5:]]]
    for s in stages:
        for i in s.inputs:
            if s is not stage and i not in stage.inputs and getattr(args, i.name, None) is not None:
                owners.setdefault(i.flag, []).append(s.method)
        for o in s.options:
            if s is not stage and o not in stage.options and getattr(args, o, None) is not None:
                owners.setdefault(option_name(o), []).append(s.method)
    if stage.section is None and getattr(args, "config", None) is not None:
        owners["--config"] = [s.method for s in stages if s.section is not None]
    if owners:
        by_methods: dict[str, list[str]] = {}
        for flag, methods in owners.items():
            by_methods.setdefault("/".join(dict.fromkeys(methods)), []).append(flag)
        raise ConfigError("; ".join(f"{', '.join(fl)} apply to --method {m} only" for m, fl in by_methods.items()))
    config = _section(args.config, stage.section) if getattr(args, "config", None) is not None else {}
    if getattr(args, "set", None):
        if stage.section is None:
            raise ConfigError(f"--set applies to --method {'/'.join(s.method for s in stages if s.section is not None)} "
                              "only")
        config = override(config, args.set)
    for flag, text in given.items():
        _, name, leaf = next(u for u in flags[flag[5:]] if u[0] is stage)
        set_value(config, name, text if isinstance(leaf, Bool) else _value(text, leaf), where=flag[5:])
    inputs = {i.name: (_labelled(getattr(args, i.name), i.flag) if i.labelled else getattr(args, i.name))
              for i in stage.inputs}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    _check_files_exist(inputs)
    options = {o: getattr(args, o) for o in stage.options if getattr(args, o) is not None}
    out = Path(stage.run(config, inputs, args.out, overwrite=args.overwrite, progress=not args.quiet, **options))
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        print(f"wrote {out}/: " + (", ".join(names) if len(names) <= 12 else f"{len(names)} files"))
    else:
        print(f"wrote {out}")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run every stage of a preset (simulate -> ... -> figures)",
                       description="Run simulate -> train -> reconstruct (nn and qe) -> evaluate -> params -> "
                                   "figures for a preset (evaluate/PRESET.yaml and the presets it names), one "
                                   "line per stage. Stages finished under the same config are re-used; an "
                                   "interrupted run resumes.")
    p.add_argument("--preset", default="quick", help="preset name (quick, bench, paper) or path to evaluate/<name>.yaml")
    p.add_argument("--root", default=None,
                   help="folder holding sims/, train/, evaluate/ (default: the current folder, else the presets "
                        "shipped with deepcmb)")
    p.add_argument("--out", default=None, help="run folder (default ROOT/data/out/run_PRESET; ./run_PRESET for the "
                                               "presets of an installed package)")
    p.add_argument("--workers", **OPTIONS["workers"])
    p.add_argument("--verbose", action="store_true", help=f"show each stage's progress bars (default: a long stage's progress every {INTERVAL_S:g} s "
                        "on stderr)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one value of the preset (e.g. --set evaluate.jackknife=10, --set run.params=false); "
                        "repeat for several")
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="run only this stage (e.g. --only reconstruct_map); repeat for several; the stages it reads "
                        "must be finished")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE", help="start at this stage")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing: print the deepcmb command of each selected stage (their configs written to "
                        "RUN_DIR/commands/), a chain of jobs ready for a batch scheduler")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> None:
    from .pipeline import run_pipeline

    run_pipeline(args.preset, out=args.out, root=args.root, workers=args.workers, verbose=args.verbose,
                 overrides=args.set, only=args.only, start=args.start, until=args.until, dry_run=args.dry_run)


LOG_FORMAT = ("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
"""Format and date format of the ``deepcmb`` log records on stderr (``2026-12-03 20:41:07 deepcmb.simulate: ...``)."""


@contextmanager
def _logging() -> Iterator[None]:
    """The ``deepcmb`` loggers' INFO records (status lines, periodic progress) on stderr with a timestamp,
    while a command runs (removed afterwards, so :func:`main` can be called again in one process)."""
    log = logging.getLogger("deepcmb")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(*LOG_FORMAT))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``deepcmb``; the options of subcommand ``command`` (all when None) are
    built from its stages' schemas."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="deepcmb", description="CMB lensing reconstruction with deep learning.")
    parser.add_argument("--version", action="version", version=f"deepcmb {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stages in commands().items():
        summary = stages[0].summary if len(stages) == 1 else "; ".join(
            f"--method {s.method}: {s.summary}" for s in stages)
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if command in (None, name):
            _add_stage_arguments(p, stages)
    _add_run(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deepcmb`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in commands() else "")
    args = parser.parse_args(argv)
    # CAMB's Fortran runtime buffers its chatter when stdout is a pipe and flushes it at exit, past
    # the point where deepcmb silences it; unbuffered, it is silenced while CAMB runs.
    os.environ.setdefault("GFORTRAN_UNBUFFERED_PRECONNECTED", "y")
    try:
        with _logging(), interruptible():
            args.func(args)
    except DeepCMBError as exc:
        print(f"deepcmb {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except TimeLimitReached as exc:
        print(f"deepcmb {args.stage}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Interrupted, or Ctrl-C before the handlers were in place
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        resumes = args.stage == "run" or any(s.resumes for s in commands()[args.stage])
        print(f"deepcmb {args.stage}: interrupted ({stop.name}); re-run the same command to "
              f"{'resume' if resumes else 'start it again'}", file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
