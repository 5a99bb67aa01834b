"""``deepcmb run``: every stage of a preset, in order, re-using the stages that are already done.

A preset ``P`` is the file ``evaluate/P.yaml`` of a preset root (a folder with ``sims/``, ``train/``,
``evaluate/``: the current folder, or the presets shipped with deepcmb, :mod:`deepcmb.shipped`). Its
``run:`` section names the other stages' presets (paths relative to the root); its ``evaluate:``,
``params:`` and ``figures:`` sections configure those stages. The stages and their outputs in the run
folder ``OUT`` (default :func:`default_out`: ``data/out/run_P`` in a checkout, ``./run_P`` for an installed
package)::

    simulate_train   OUT/sims_train.h5         training maps        (run.train_sims)
    simulate_test    OUT/sims_test.h5          test maps, never trained on (run.test_sims)
    reconstruct_qe_train  OUT/rec_qe_train.h5  QE of the training maps (only for a kappa_qe input)
    train            OUT/train/                the network's run folder (run.train)
    reconstruct_qe_<E>  OUT/rec_qe_<e>.h5      each quadratic estimator of run.qe_estimators
    reconstruct_map  OUT/rec_map.h5            the iterative MAP estimator (only with run.map)
    reconstruct_nn   OUT/rec_nn.h5             the trained network on the test maps
    reconstruct_<M>  OUT/rec_<M>.h5            each model of run.models (e.g. the shipped pretrained one)
    evaluate         OUT/eval/                 report.h5, summary.json
    params           OUT/params/               chains.h5, summary.json
    figures          OUT/figures/              PNG and PDF of every figure, index.json
    simulate_<R>, reconstruct_<M>_<R>, evaluate_<R>   OUT/robust_<R>/   the same on each further test
                     set R of run.robustness: sims.h5, rec_<M>.h5, eval/
    results          OUT/results/              results.json, results.rst: every evaluation in one
                                               table, with the benchmark targets (run.results)

Each finished stage is recorded in ``OUT/pipeline.json`` with a key: the SHA-256 of its own config,
deepcmb's version and the keys of the stages it reads (for a network of ``run.models``, the SHA-256 of its
weights, not its path). On a re-run a stage whose output exists under the same key is
re-used; a changed config re-runs that stage and every stage after it. An interrupted stage that
resumes (:attr:`deepcmb.stages.Stage.resumes`: simulate, train) continues where it stopped; the others
start again. ``deepcmb run`` holds the lock of its run folder (``OUT.lock`` beside it,
:mod:`deepcmb.io.lock`) while it runs, so a second run on the same folder stops at once, and
``pipeline.json`` is written atomically (:func:`deepcmb.io.files.write_json`) under that lock.

On stdout, a line when each stage starts and one when it ends (``done in``, or ``re-used``); in
between, a long stage logs its progress (maps done and total, training epochs with their loss,
elapsed time, ETA) every :data:`deepcmb.progress.INTERVAL_S` seconds, or, with ``verbose``, shows
its progress bars.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, shipped
from .config import Bool, Free, ListOf, Str, load_yaml, option_name, override, resolve
from .errors import ConfigError, InputError
from .io.calibration import file_sha256
from .io.files import write_json
from .io.lock import output_lock
from .progress import bars
from .provenance import config_json
from .qe.stage import SCHEMA as QE_SCHEMA
from .stages import STAGES

QE_SETTINGS = {k: v for k, v in QE_SCHEMA.items() if k != "estimator"}
"""The settings of every QE reconstruction of a run (the QE stage's schema; the estimators are
``run.qe_estimators``)."""

RUN_SCHEMA = {
    "train_sims": Str("sims/quick.yaml", doc="sims preset of the training maps (path from the root)"),
    "test_sims": Str("sims/quick_test.yaml", doc="sims preset of the test maps (path from the root)"),
    "train": Str("train/quick.yaml", doc="train preset of the network (path from the root)"),
    "models": Free({}, doc="label -> further trained model evaluated (path from the root, or a shipped network's name)"),
    "qe_estimators": ListOf(Str(), ["EB", "MV_POL"], doc="quadratic estimators evaluated"),
    "qe_input": Str("MV_POL", doc="estimator whose kappa feeds a network with a kappa_qe input"),
    "qe": Free({}, doc="settings of every QE reconstruction (deepcmb.qe.stage.SCHEMA but estimator)"),
    "map": Free(None, doc="settings of the MAP reconstruction of the test maps (deepcmb.iterative.settings.SCHEMA; "
                          "{} for its defaults); null: no MAP"),
    "params": Bool(True, doc="estimate parameters"),
    "symmetrize": Bool(False, doc="average network reconstructions over the 8 grid symmetries"),
    "robustness": Free({}, doc="tag -> further test set (sims preset, or {sims, evaluate, qe, any_shape})"),
    "uncertainty": Free(None, doc="per-map uncertainties: {sims: calibration sims preset, plus deepcmb calibrate "
                                  "settings}; null: none"),
    "results": Bool(False, doc="gather every evaluation into one table with the benchmark targets"),
}
"""Schema of the ``run:`` section of ``evaluate/<preset>.yaml``.

``models`` maps extra labels to trained models (run folders or ``.keras`` files, relative to the
root) that are evaluated beside the freshly trained one; ``qe_input`` is the estimator whose kappa
feeds a network with a ``kappa_qe`` input channel; ``qe`` holds the settings of every QE
reconstruction (:data:`QE_SETTINGS`: the QE stage's schema, band ``lmin, lmax, Lmin, Lmax``,
``apodize_arcmin`` ...); ``map`` (a mapping, ``{}`` for the defaults) adds the iterative MAP
reconstruction (:mod:`deepcmb.iterative`, label ``map``) of the main test set, and of each robustness
set that asks for it; ``params: false`` skips parameter estimation;
``symmetrize: true`` averages every network reconstruction over the 8 symmetries of the pixel grid
(:func:`deepcmb.nn.reconstruct.predict_symmetrized`).
``robustness`` maps a tag to a further test set on which every method is evaluated again (with the
networks trained as configured, not retrained): a sims preset path, or ``{sims: PATH, evaluate:
{...}, qe: {...}, map: {...}, any_shape: BOOL}`` whose keys override the preset's ``evaluate:`` section,
``run.qe`` and ``run.map`` for that set (``map`` given: that set also gets the MAP reconstruction) (e.g. the apodisation of non-periodic curved-sky patches); ``any_shape:
true`` applies the networks to maps of another size than they were trained on (the fully
convolutional network rebuilt at the new size, :func:`deepcmb.nn.reconstruct.at_shape`).
``results: true`` adds the stage that gathers every evaluation into one table with the benchmark
targets (:mod:`deepcmb.results`, configured by the preset's ``results:`` section).
``uncertainty: {sims: PATH, ...}`` gives every reconstruction a per-map posterior
(:mod:`deepcmb.uncertainty`): the calibration maps of the sims preset ``PATH`` (never trained or tested on)
are reconstructed by every method of the main test set, each method is calibrated on them (``deepcmb
calibrate``, its other keys: :data:`deepcmb.uncertainty.stage.SCHEMA`), and each reconstruction made with
the same method and settings on maps of the same shape and pixel, on the test set and on the robustness
sets, gets ``--uncertainty``; the evaluations then measure coverage.
"""

SECTIONS = ("run", "evaluate", "params", "figures", "results")


def find_preset(preset: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """Locate a preset file.

    Parameters
    ----------
    preset : str
        A preset name (``quick``, ``paper``) looked up as ``ROOT/evaluate/<name>.yaml``, or a path to
        such a YAML file (its root is then the folder above ``evaluate/``).
    root : str or Path, optional
        Preset root; default: the current folder if it has ``evaluate/<name>.yaml``, else the presets
        shipped with the package (:func:`deepcmb.shipped.root`).

    Returns
    -------
    (Path, Path)
        The preset file and its root.
    """
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset).resolve()
        if not path.is_file():
            raise ConfigError(f"--preset: {preset}: no such file")
        return path, Path(root).resolve() if root else path.parent.parent
    candidates = [Path(root)] if root else [Path.cwd(), shipped.root()]
    candidates = list(dict.fromkeys(c.resolve() for c in candidates))
    for base in candidates:
        path = base / "evaluate" / f"{preset}.yaml"
        if path.is_file():
            return path.resolve(), base.resolve()
    known = sorted({p.stem for base in candidates for p in (base / "evaluate").glob("*.yaml")})
    raise ConfigError(f"--preset: no preset {preset!r} in {', '.join(str(b / 'evaluate') for b in candidates)}"
                      + (f" (known: {', '.join(known)})" if known else ""))


def default_out(preset_file: Path, root: Path) -> Path:
    """The run folder of a preset when ``--out`` is not given: ``ROOT/data/out/run_<preset>`` for a preset
    root one can write to (a checkout, a folder of one's own presets), ``./run_<preset>`` in the current
    folder for the presets shipped inside an installed package."""
    name = f"run_{preset_file.stem}"
    return Path.cwd() / name if shipped.is_packaged(root) else root / "data" / "out" / name


class Step:
    """One step of a run: a stage of :data:`deepcmb.stages.STAGES` with its config, files and output.

    Attributes
    ----------
    name : str
        Step name in ``pipeline.json`` (``reconstruct_qe_eb_ood``).
    stage : Stage
        What runs.
    output : Path
        The file or folder it writes.
    config : dict
        Its config (the ``config`` argument of the stage): the settings the preset gives, the stage
        fills in its defaults.
    files : dict
        The files it reads (the ``inputs`` argument of the stage).
    inputs : list of str
        Steps whose outputs it reads.
    identity : dict
        What else identifies its output (a shipped model's path), part of the key only.
    options : dict
        Execution options (e.g. ``workers``), which do not change the output.
    key : str
        SHA-256 of its name, config, identity, deepcmb's version and the keys of the steps it reads (set
        by :func:`plan_stages`): an output of another version is not re-used.
    """

    def __init__(self, name, stage, output, config, files, inputs, identity=None, options=None):
        self.name, self.stage, self.output, self.config = name, stage, Path(output), config
        self.files, self.inputs, self.identity = files, list(inputs), identity or {}
        self.options, self.key = options or {}, None

    def run(self, overwrite: bool, progress: bool) -> Path:
        """Run the stage on this step's config and files."""
        return self.stage.run(self.config, self.files, self.output, overwrite=overwrite, progress=progress,
                              **self.options)


def _pixels(sims_cfg: dict) -> tuple[tuple[int, ...], float]:
    """``(shape, pixel_arcmin)`` of the maps a simulation preset makes (a calibration holds for those only)."""
    g = resolve(sims_cfg.get("geometry"), STAGES["simulate"].load_schema()["geometry"], prefix="geometry.")
    return tuple(g["shape"]), float(g["pixel_arcmin"])


def _key(step, keys):
    text = config_json({"stage": step.name, "config": {**step.identity, **step.config}, "deepcmb": __version__,
                        "inputs": [keys[i] for i in step.inputs]})
    return hashlib.sha256(text.encode()).hexdigest()


def _by_name(steps, name):
    return next(s for s in steps if s.name == name)


def _label(name):
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def _robustness(entries):
    """``{tag: {'sims': path, 'evaluate': overrides, 'qe': overrides}}`` from ``run.robustness`` (checked)."""
    if not isinstance(entries, dict):
        raise ConfigError("run.robustness: expected a mapping tag -> sims preset or {sims, evaluate, qe}")
    out = {}
    for tag, entry in entries.items():
        if not isinstance(tag, str) or not tag or _label(tag) != tag or tag in ("test", "train"):
            raise ConfigError(f"run.robustness: tag {tag!r} must be lower-case letters, digits and _ "
                              "(and not 'test' or 'train')")
        if isinstance(entry, str):
            entry = {"sims": entry}
        if (not isinstance(entry, dict) or set(entry) - {"sims", "evaluate", "qe", "map", "any_shape"}
                or not isinstance(entry.get("sims"), str) or not isinstance(entry.get("any_shape", False), bool)):
            raise ConfigError(f"run.robustness.{tag}: expected a sims preset path or "
                              "{sims: PATH, evaluate: {...}, qe: {...}, map: {...}, any_shape: true|false}")
        out[tag] = {"sims": entry["sims"], "any_shape": entry.get("any_shape", False), "map": entry.get("map")}
        if out[tag]["map"] is not None and not isinstance(out[tag]["map"], dict):
            raise ConfigError(f"run.robustness.{tag}.map: expected a mapping (MAP settings, {{}} for the defaults)")
        for key in ("evaluate", "qe"):
            out[tag][key] = entry.get(key) or {}
            if not isinstance(out[tag][key], dict):
                raise ConfigError(f"run.robustness.{tag}.{key}: expected a mapping")
    return out


def _merge(base, overrides):
    """``base`` with ``overrides`` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def plan_stages(preset_file: Path, root: Path, out: Path, workers: int | None = None,
                overrides: Sequence[str] = ()) -> list[Step]:
    """The steps of a preset, in order (nothing is run).

    Parameters
    ----------
    preset_file, root : Path
        From :func:`find_preset`.
    out : Path
        Run folder.
    workers : int, optional
        Worker processes of the simulate steps (default: one per core).
    overrides : sequence of str
        ``SECTION.KEY=VALUE`` assignments applied to the preset (:func:`deepcmb.config.override`).

    Returns
    -------
    list of Step
    """
    from .nn.settings import resolve_config as resolve_train

    top = override(load_yaml(preset_file), overrides)
    unknown = sorted(set(top) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{preset_file}: unknown section(s) {', '.join(unknown)} (expected {', '.join(SECTIONS)})")
    run = resolve(top.get("run") or {}, RUN_SCHEMA, prefix="run.")
    sections = {k: top.get(k) or {} for k in SECTIONS[1:]}

    def preset(path: str, where: str) -> dict:
        if not (root / path).is_file():
            raise ConfigError(f"{where}: {root / path} does not exist")
        return load_yaml(root / path)

    train_sims, test_sims, train_cfg = (preset(run[k], f"run.{k}") for k in ("train_sims", "test_sims", "train"))
    if not isinstance(run["models"], dict):
        raise ConfigError("run.models: expected a mapping label -> model path")
    robustness = _robustness(run["robustness"])
    qe_input = "kappa_qe" in resolve_train(train_cfg)["model"]["inputs"]
    estimators = list(run["qe_estimators"])
    if qe_input and run["qe_input"] not in estimators:
        estimators.append(run["qe_input"])
    o = Path(out)
    steps = []

    def add(name: str, stage: str, output: str | Path, config: dict, files: dict, inputs: list[str],
            identity: dict | None = None, **options: Any) -> None:
        steps.append(Step(name, STAGES[stage], o / output, config, files, inputs, identity, options))

    def qe_settings(given: dict, where: str) -> dict:
        """The QE settings a preset gives (checked), as the QE steps' config."""
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return {k: v for k, v in resolve(given, QE_SETTINGS, prefix=f"{where}.").items() if k in given}

    qe_opts = qe_settings(run["qe"], "run.qe")
    map_schema = STAGES["reconstruct_map"].load_schema()

    def map_settings(given: dict | None, where: str) -> dict | None:
        """The MAP settings a preset gives (checked), as the MAP step's config; None: no MAP."""
        if given is None:
            return None
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: expected a mapping (MAP settings, {{}} for the defaults) or null")
        return {k: v for k, v in resolve(given, map_schema, prefix=f"{where}.").items() if k in given}

    add("simulate_train", "simulate", "sims_train.h5", train_sims, {}, [], workers=workers)
    train_inputs = {"sims": o / "sims_train.h5"}
    if qe_input:
        # the network reads the QE kappa as an input channel: the QE of the training maps feeds the
        # training, the same estimator on the test maps feeds the network's reconstruction
        train_inputs["qe"] = o / "rec_qe_train.h5"
        add("reconstruct_qe_train", "reconstruct_qe", "rec_qe_train.h5", {"estimator": run["qe_input"], **qe_opts},
            {"sims": o / "sims_train.h5"}, ["simulate_train"])
    add("train", "train", "train", train_cfg, train_inputs,
        ["simulate_train"] + (["reconstruct_qe_train"] if qe_input else []))
    models = {}
    for label, model in run["models"].items():
        lab = _label(label)
        if lab in ("nn", "qe_train", "map") or lab.startswith("qe_"):
            raise ConfigError(f"run.models.{label}: the labels 'nn', 'map' and 'qe_*' are taken")
        try:
            path = shipped.network(root / model if (root / model).exists() else model).resolve()
        except InputError as exc:
            raise ConfigError(f"run.models.{label}: {exc}") from None
        weights = path / "model.keras" if path.is_dir() else path
        if not weights.is_file():
            raise ConfigError(f"run.models.{label}: {weights}: no such model file")
        # the network's weights identify its reconstructions, wherever the checkout or the run folder lies
        models[lab] = path, {"model_sha256": file_sha256(weights)}

    calibrated = {}  # label -> (stage, config of the calibrated reconstruction, its calibration file, pixels)

    def reconstructions(tag: str, folder: str, sims: Path, opts: dict, map_opts: dict | None,
                        pixels: tuple, any_shape: bool = False) -> dict:
        """The reconstruction steps of every method on one simulation file (names end in ``_tag``, but the
        main test set's); a reconstruction made as a calibrated one, of maps of the calibration maps' shape
        and pixel (``pixels``, :func:`_pixels`), gets its calibration file."""
        suffix = "" if tag == "test" else f"_{tag}"
        recs = {}

        def rec(lab, stage, config, files, inputs, identity=None, **options):
            recs[lab] = o / folder / f"rec_{lab}.h5"
            cal = calibrated.get(lab)
            if cal is not None and cal[:2] == (stage, config) and cal[3] == pixels:
                files = {**files, "uncertainty": cal[2]}
                inputs = inputs + [f"calibrate_{lab}"]
            add(f"reconstruct_{lab}{suffix}", stage, recs[lab].relative_to(o), config, files, inputs, identity,
                **options)

        for est in estimators:
            rec("qe_" + _label(est), "reconstruct_qe", {"estimator": est, **opts}, {"sims": sims}, [f"simulate_{tag}"])
        if map_opts is not None:
            rec("map", "reconstruct_map", map_opts, {"sims": sims}, [f"simulate_{tag}"], workers=workers)
        nn_cfg = {k: True for k, on in (("any_shape", any_shape), ("symmetrize", run["symmetrize"])) if on}
        qe_label = "qe_" + _label(run["qe_input"])
        rec("nn", "reconstruct_nn", nn_cfg,
            {"sims": sims, "model": o / "train", **({"qe": recs[qe_label]} if qe_input else {})},
            ["train", f"simulate_{tag}"] + ([f"reconstruct_{qe_label}{suffix}"] if qe_input else []))
        for lab, (model_path, model_id) in models.items():
            rec(lab, "reconstruct_nn", nn_cfg, {"sims": sims, "model": model_path}, [f"simulate_{tag}"], model_id)
        return recs

    def test_set(tag: str, folder: str, sims_cfg: dict, eval_cfg: dict, opts: dict, map_opts: dict | None,
                 any_shape: bool = False) -> None:
        """Steps of one test set: simulate, every reconstruction, evaluate (names end in ``_tag``)."""
        suffix = "" if tag == "test" else f"_{tag}"
        sims = o / folder / ("sims_test.h5" if tag == "test" else "sims.h5")
        add(f"simulate_{tag}", "simulate", sims.relative_to(o), sims_cfg, {}, [], workers=workers)
        first = len(steps)
        recs = reconstructions(tag, folder, sims, opts, map_opts, _pixels(sims_cfg), any_shape)
        add(f"evaluate{suffix}", "evaluate", Path(folder) / "eval", eval_cfg, {"sims": sims, "recs": recs},
            [s.name for s in steps[first:]])

    main_map = map_settings(run["map"], "run.map")
    if run["uncertainty"] is not None:
        given = run["uncertainty"]
        if not isinstance(given, dict) or not isinstance(given.get("sims"), str):
            raise ConfigError("run.uncertainty: expected {sims: calibration sims preset, ...calibrate settings} "
                              "or null")
        cal_cfg = {k: v for k, v in given.items() if k != "sims"}
        resolve(cal_cfg, STAGES["calibrate"].load_schema(), prefix="run.uncertainty.")
        cal_sims = preset(given["sims"], "run.uncertainty.sims")
        cal_pixels = _pixels(cal_sims)
        add("simulate_calibration", "simulate", "calibration/sims.h5", cal_sims, {}, [], workers=workers)
        first = len(steps)
        cal_recs = reconstructions("calibration", "calibration/", o / "calibration" / "sims.h5", qe_opts, main_map,
                                   cal_pixels)
        for step in steps[first:]:
            lab = step.name[len("reconstruct_"):-len("_calibration")]
            add(f"calibrate_{lab}", "calibrate", f"calibration/calib_{lab}.h5", cal_cfg,
                {"sims": o / "calibration" / "sims.h5", "rec": cal_recs[lab]}, ["simulate_calibration", step.name])
            calibrated[lab] = (step.stage.name, step.config, o / "calibration" / f"calib_{lab}.h5", cal_pixels)
    test_set("test", "", test_sims, sections["evaluate"], qe_opts, main_map)
    for tag, entry in robustness.items():
        test_set(tag, f"robust_{tag}/", preset(entry["sims"], f"run.robustness.{tag}.sims"),
                 _merge(sections["evaluate"], entry["evaluate"]),
                 qe_settings({**run["qe"], **entry["qe"]}, f"run.robustness.{tag}.qe"),
                 None if entry["map"] is None else map_settings({**(run["map"] or {}), **entry["map"]},
                                                                f"run.robustness.{tag}.map"),
                 entry["any_shape"])
    report = {"report": o / "eval" / "report.h5"}
    if run["params"]:
        add("params", "params", "params", sections["params"], report, ["evaluate"])
    add("figures", "figures", "figures", resolve(sections["figures"], STAGES["figures"].load_schema(), "figures."),
        {**report, **({"chains": o / "params" / "chains.h5"} if run["params"] else {})},
        ["evaluate"] + (["params"] if run["params"] else []))
    if run["results"]:
        evaluations = {"test": o / "eval", **{tag: o / f"robust_{tag}" / "eval" for tag in robustness}}
        add("results", "results", "results", resolve(sections["results"], STAGES["results"].load_schema(), "results."),
            {"evaluations": evaluations},
            [s.name for s in steps if s.name.startswith("evaluate")])
    keys = {}
    for s in steps:
        s.key = keys[s.name] = _key(s, keys)
    return steps


def select_steps(steps: Sequence[Step], only: Sequence[str] = (), start: str | None = None,
                 until: str | None = None) -> list[Step]:
    """The steps of a run that ``--only``, ``--from`` and ``--until`` select, in run order.

    Parameters
    ----------
    steps : sequence of Step
        The whole run (:func:`plan_stages`).
    only : sequence of str
        Step names to run (all when empty).
    start, until : str, optional
        First and last step run (inclusive).

    Raises
    ------
    ConfigError
        For a name that is not a step of the run (the message lists them).
    """
    names = [s.name for s in steps]
    for flag, given in (("--only", list(only)), ("--from", [start] if start else []),
                        ("--until", [until] if until else [])):
        unknown = [g for g in given if g not in names]
        if unknown:
            raise ConfigError(f"{flag} {', '.join(unknown)}: not a stage of this run; its stages: {', '.join(names)}")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    return [s for i, s in enumerate(steps) if first <= i <= last and (not only or s.name in only)]


def stage_command(step: Step, folder: str | Path) -> str:
    """The shell command that runs one step as its own ``deepcmb`` command.

    The step's config is written to ``folder/<step>.yaml`` under the stage's section (a stage without a
    section gets its settings as options), so the printed commands, run in order, do what ``deepcmb run``
    does; each can go into a job of its own (e.g. one job per line of a SLURM chain).

    Returns
    -------
    str
        The command, quoted for a POSIX shell.
    """
    import shlex

    import yaml

    s = step.stage
    args = ["deepcmb", s.command] + (["--method", s.method] if s.method else [])
    for i in s.inputs:
        value = step.files.get(i.name)
        if isinstance(value, dict):
            for label, path in value.items():
                args += [i.flag, f"{label}={path}"]
        elif value is not None:
            args += [i.flag, str(value)]
    args += ["--out", str(step.output)]
    if s.section is None:
        for name, value in step.config.items():
            args += [option_name(name)] if value is True else [option_name(name), str(value)]
    elif step.config or s.config_required:
        nested = json.loads(config_json(step.config))
        for key in reversed([k for k in s.section.split(".") if k]):
            nested = {key: nested}
        path = Path(folder) / f"{step.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(nested, sort_keys=False))
        args += ["--config", str(path)]
    for name, value in step.options.items():
        if value is not None:
            args += [option_name(name), str(value)]
    return shlex.join(args)


def _echo(line: str) -> None:
    """Print a line now (stdout may be a pipe, where the stages' records on stderr would overtake it)."""
    print(line, flush=True)


def run_pipeline(preset: str = "quick", out: str | Path | None = None, root: str | Path | None = None,
                 workers: int | None = None, verbose: bool = False, echo: Callable[[str], Any] = _echo,
                 overrides: Sequence[str] = (), only: Sequence[str] = (), start: str | None = None,
                 until: str | None = None, dry_run: bool = False) -> Path:
    """Run (or resume) every stage of a preset.

    Parameters
    ----------
    preset : str
        Preset name or file (see :func:`find_preset`).
    out : str or Path, optional
        Run folder; default :func:`default_out`.
    root : str or Path, optional
        Preset root.
    workers : int, optional
        Worker processes of the simulate stages (default: one per core).
    verbose : bool
        Show each stage's own progress bars (on a terminal); without, a long stage logs its progress
        every :data:`deepcmb.progress.INTERVAL_S` seconds.
    echo : callable
        Receives a line when each stage starts and one when it ends (default: printed on stdout).
    overrides : sequence of str
        ``SECTION.KEY=VALUE`` assignments applied to the preset (``--set``).
    only, start, until
        Run only these steps, or from ``start`` to ``until`` (:func:`select_steps`); a selected step whose
        inputs are not finished in the run folder is refused.
    dry_run : bool
        Run nothing: write each selected step's config under ``OUT/commands/`` and echo the equivalent
        ``deepcmb`` command of each (:func:`stage_command`).

    Returns
    -------
    Path
        The run folder.
    """
    preset_file, root = find_preset(preset, root)
    out = Path(out) if out is not None else default_out(preset_file, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _run_steps(preset_file, root, out, workers, verbose, echo, overrides, only, start, until, dry_run)


def _run_steps(preset_file, root, out, workers, verbose, echo, overrides, only, start, until, dry_run):
    """The body of :func:`run_pipeline`, under the lock of the run folder."""
    steps = plan_stages(preset_file, root, out, workers=workers, overrides=overrides)
    chosen = select_steps(steps, only, start, until)
    out.mkdir(exist_ok=True)
    if dry_run:
        for s in chosen:
            s.output.parent.mkdir(parents=True, exist_ok=True)  # the printed commands write into it
            echo(stage_command(s, out / "commands"))
        return out
    record_path = out / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    picked = {s.name for s in chosen}
    for s in chosen:
        missing = [i for i in s.inputs if i not in picked and not (record.get(i, {}).get("key") == _by_name(steps, i).key
                                                                  and record[i].get("finished"))]
        if missing:
            raise ConfigError(f"{s.name} reads the output of {', '.join(missing)}, not finished in {out} under this "
                              "config: run it first, or select it too")
    steps = chosen
    total = time.perf_counter()
    width = max(len(s.name) for s in steps)
    for i, s in enumerate(steps, 1):
        prefix = f"[{i:>{len(str(len(steps)))}}/{len(steps)}] {s.name:<{width}}"
        entry = record.get(s.name, {})
        same = entry.get("key") == s.key
        if same and s.output.exists() and (entry.get("finished") or s.stage.resumes and s.stage.is_finished(s.output)):
            echo(f"{prefix}  re-used   {s.output}")
            continue
        record[s.name] = {"key": s.key, "output": str(s.output), "finished": False}
        write_json(record_path, record)
        echo(f"{prefix}  started   {time.strftime('%H:%M:%S')}")
        t0 = time.perf_counter()
        s.output.parent.mkdir(parents=True, exist_ok=True)
        # an interrupted run of a stage that resumes, under this very key, continues where it stopped
        with bars(verbose):
            s.run(overwrite=s.output.exists() and not (same and s.stage.resumes), progress=True)
        record[s.name].update(finished=True, seconds=round(time.perf_counter() - t0, 1))
        write_json(record_path, record)
        echo(f"{prefix}  done in {time.perf_counter() - t0:6.1f} s   {s.output}")
    echo(f"all {len(steps)} stages done in {time.perf_counter() - total:.0f} s; summary: {out / 'eval' / 'summary.json'}")
    return out
