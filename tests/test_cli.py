"""The command line is built from the stage table: every command line the manual has shown parses, the
options come from the schemas (one default each), and user errors are one line with exit code 2."""

import shlex

import pytest

from deepcmb.cli import build_parser, main
from deepcmb.config import leaves
from deepcmb.stages import STAGES

# every command line of the README up to version 7d5add9, with every optional part given
DOCUMENTED = [
    "run --preset quick",
    "simulate --config CONFIG.yaml --out SIMS.h5 --workers 2 --scheduler tcp://h:8786 --overwrite --quiet",
    "reconstruct --method qe --data SIMS.h5 --out REC_QE.h5 --estimator EB --lmin 300 --lmax 3500 --Lmin 20 "
    "--Lmax 3500 --wiener --apodize-arcmin 30 --mean-field-maps 64 --precision double --batch-size 32 --overwrite "
    "--quiet",
    "train --config train/quick.yaml --data SIMS.h5 --out RUN_DIR --qe REC_QE.h5 --overwrite --quiet",
    "reconstruct --method nn --model RUN_DIR --data SIMS.h5 --out REC_NN.h5 --split test --batch-size 32 "
    "--qe REC_QE.h5 --any-shape --symmetrize",
    "simulate --config data/pretrained/quick/sims.yaml --out data/out/sims_pretrained.h5",
    "train --config data/pretrained/quick/config.yaml --data data/out/sims_pretrained.h5 --out "
    "data/out/train_pretrained",
    "evaluate --config evaluate/quick.yaml --sims SIMS.h5 --rec nn=REC_NN.h5 --rec qe_eb=REC_QE.h5 --out EVAL_DIR "
    "--overwrite --quiet",
    "params --config evaluate/quick.yaml --report EVAL_DIR/report.h5 --out PARAMS_DIR --overwrite --quiet",
    "figures --report EVAL_DIR/report.h5 --chains PARAMS_DIR/chains.h5 --out FIG_DIR --formats png,pdf --overwrite "
    "--quiet",
    "run --preset paper --root ROOT --out RUN_DIR --workers 2 --verbose",
]


@pytest.mark.parametrize("line", DOCUMENTED)
def test_documented_command_lines_parse(line):
    argv = shlex.split(line)
    args = build_parser(argv[0]).parse_args(argv)
    assert args.stage == argv[0]
    if "--data" in argv:  # the older name of --sims
        assert args.sims == argv[argv.index("--data") + 1]


def test_options_come_from_the_schemas():
    """Each leaf of a stage whose leaves are options is an option, whose help states the schema's default."""
    for stage in (s for s in STAGES.values() if s.flags):
        p = build_parser(stage.command)
        sub = next(a for a in p._actions if a.dest == "stage").choices[stage.command]
        options = {o: a for a in sub._actions for o in a.option_strings}
        for name, leaf in leaves(stage.load_schema()):
            flag = "--" + name.replace("_", "-")
            assert flag in options, (stage.name, flag)
            if leaf.default is not None and not isinstance(leaf.default, bool):
                assert str(leaf.default) in options[flag].help, (flag, options[flag].help)
            if stage.method and leaf.doc:  # an option shared by methods carries this method's own meaning
                assert leaf.doc in " ".join(options[flag].help.split()), (stage.name, flag)


def test_flags_of_the_other_method_are_refused(tmp_path, capsys):
    code = main(["reconstruct", "--method", "qe", "--sims", str(tmp_path / "s.h5"), "--out", str(tmp_path / "o.h5"),
                 "--symmetrize"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "deepcmb reconstruct: error: --symmetrize apply to --method nn only"


def test_a_bad_option_value_is_one_line(tmp_path, capsys):
    (tmp_path / "s.h5").write_bytes(b"")  # the settings are checked before the file is read
    code = main(["reconstruct", "--method", "qe", "--sims", str(tmp_path / "s.h5"), "--out", str(tmp_path / "o.h5"),
                 "--lmin", "-5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "deepcmb reconstruct: error: lmin: expected a number >= 0, got -5"


def test_a_missing_input_is_refused_before_the_backend_starts(tmp_path):
    """One line, exit 2, and no TensorFlow start-up lines: the file is checked before Keras is imported."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "deepcmb.cli", "reconstruct", "--method", "nn", "--sims",
                           str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o.h5")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"deepcmb reconstruct: error: {tmp_path / 'missing.h5'}: no such file"


def test_set_overrides_a_config_value(tmp_path, capsys):
    """--set KEY=VALUE lands in the stage's config (and is checked like a value of the file)."""
    from deepcmb.config import override
    from deepcmb.errors import ConfigError

    cfg = override({"training": {"epochs": 5}}, ["training.epochs=3", "model.filters=[8, 16]", "seed=null"])
    assert cfg == {"training": {"epochs": 3}, "model": {"filters": [8, 16]}, "seed": None}
    for bad in ("epochs", "=3", "a..b=1", "training.epochs.x=1"):
        with pytest.raises(ConfigError, match="--set"):
            override({"training": {"epochs": 5}}, [bad])
    config = tmp_path / "e.yaml"
    config.write_text("evaluate:\n  jackknife: 8\n")
    (tmp_path / "s.h5").write_bytes(b"")
    (tmp_path / "r.h5").write_bytes(b"")
    code = main(["evaluate", "--config", str(config), "--sims", str(tmp_path / "s.h5"), "--rec", f"nn={tmp_path / 'r.h5'}",
                 "--out", str(tmp_path / "ev"), "--set", "jackknife=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("deepcmb evaluate: error: evaluate.jackknife: expected an integer >= 2, got 1")


def test_set_overrides_a_preset_of_deepcmb_run(tmp_path):
    from deepcmb.pipeline import find_preset, plan_stages

    path, root = find_preset("quick")
    plain = {s.name: s for s in plan_stages(path, root, tmp_path / "run")}
    steps = {s.name: s for s in plan_stages(path, root, tmp_path / "run",
                                            overrides=["evaluate.jackknife=10", "run.params=false"])}
    assert steps["evaluate"].config["jackknife"] == 10 and plain["evaluate"].config["jackknife"] == 20
    assert "params" in plain and "params" not in steps
    assert steps["simulate_train"].key == plain["simulate_train"].key != steps["evaluate"].key


def test_options_of_other_methods_are_refused_naming_their_methods(tmp_path, capsys):
    code = main(["reconstruct", "--method", "qe", "--sims", str(tmp_path / "s.h5"), "--out", str(tmp_path / "o.h5"),
                 "--workers", "2", "--max-iterations", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "deepcmb reconstruct: error: --max-iterations, --workers apply to --method map only"
    code = main(["reconstruct", "--method", "nn", "--sims", str(tmp_path / "s.h5"), "--out", str(tmp_path / "o.h5"),
                 "--lmin", "30", "--symmetrize"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "deepcmb reconstruct: error: --lmin apply to --method qe/map only"
