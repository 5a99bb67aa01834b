"""Make a shipped network (``data/pretrained/<name>/``) from a finished run folder of ``deepcmb train``.

The maintainers' step that produced the shipped networks; run it from a checkout::

    python benchmarks/ship_network.py RUN_DIR data/pretrained/NAME [--eval EVAL_DIR] [--sims-config SIMS.yaml]
    python benchmarks/ship_network.py RUN_DIR data/pretrained/NAME --eval EVAL_DIR --card-only

(``--card-only``: only the model card's ``measured`` is written, from an evaluation finished after the
network was shipped; ``model.keras`` is left as it is, so that its SHA-256, which its calibration file
records, stays the same.)

It writes, in the destination folder:

- ``model.keras``: the best epoch's network, taking Stokes Q and U in µK. A network saved before the E/B
  split became a layer (its inputs ``E``, ``B`` made outside it) is rebuilt with the split as its first
  layer (:class:`deepcmb.nn.layers.StokesToEB`) and the same weights, and recorded with the beam and
  noise levels of its training file; the script checks that the rebuilt network on Q, U gives the old one's
  output on the numpy E/B split of the same maps (to float32 precision).
- ``model.json``: the model card of the run (inputs, normalisation, pixel size, beam, noise levels,
  training data identity, steps, commit), plus ``training``: epochs run, optimizer steps, training time
  and samples/s from ``history.csv``; and ``measured``: with ``--eval``, the evaluation summary of the
  run's test maps (rho^2 and N_eff per method, noise level and L bin).
- ``config.yaml``, ``history.csv``, ``normalization.json`` of the run; ``sims.yaml``, the training
  simulation preset (``--sims-config``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def rebuild_with_split(run: Path, model, spec, card):
    """The network of ``run`` rebuilt to take Q, U (its E/B split as a layer), with the same weights."""
    from deepcmb.io.sims import open_sims, read_instruments
    from deepcmb.nn.data import MapSource
    from deepcmb.nn.model import build_resunet

    sims = card["trained_on"]["path"]
    with open_sims(sims) as f:
        instruments = read_instruments(f)
    cfg = card["config"]["model"]
    new = build_resunet(cfg, tuple(spec["shape"]), spec["stats"], pixel_arcmin=spec["pixel_arcmin"],
                        instruments=instruments, name=model.name)
    new.set_weights(model.get_weights())
    source = MapSource(sims)
    rows = np.arange(16)
    q, u, e, b = (source.read(n, rows) for n in ("Q", "U", "E", "B"))
    old = np.asarray(model.predict_on_batch(np.stack([e, b], -1))["kappa"])
    now = np.asarray(new.predict_on_batch(np.stack([q, u], -1))["kappa"])
    err = float(np.abs(now - old).max() / np.abs(old).max())
    if err > 1e-4:
        sys.exit(f"the rebuilt network differs from the run's by {err:.2e} (relative): not shipped")
    print(f"rebuilt with the E/B split as a layer: max relative difference {err:.1e} on 16 training maps")
    return new


def training_summary(history: Path) -> dict:
    """Epochs, training time and mean samples/s of a run's history.csv."""
    with history.open() as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r["time_s"]) for r in rows)
    return {"epochs": len(rows), "seconds": round(seconds, 1),
            "samples_per_s": round(float(np.median([float(r["samples_per_s"]) for r in rows])), 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="finished run folder of deepcmb train")
    p.add_argument("dest", type=Path, help="data/pretrained/NAME")
    p.add_argument("--eval", type=Path, help="evaluation folder of the run's test maps (its summary.json)")
    p.add_argument("--sims-config", type=Path, help="the training simulation preset (copied as sims.yaml)")
    p.add_argument("--card-only", action="store_true",
                   help="only set the shipped model card's measured summary from --eval (model.keras unchanged)")
    args = p.parse_args(argv)
    if args.card_only:
        if not args.eval:
            sys.exit("--card-only needs --eval")
        card_path = args.dest / "model.json"
        card = json.loads(card_path.read_text())
        card["measured"] = json.loads((args.eval / "summary.json").read_text())
        card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
        print(f"wrote {card_path}")
        return

    from deepcmb.nn.model import model_spec
    from deepcmb.nn.reconstruct import load_network
    from deepcmb.nn.rundir import save_model

    model, spec = load_network(args.run)
    card = dict(spec["card"])
    if "eb_split" not in [layer.name for layer in model.layers] and set(spec["inputs"]) & {"E", "B"}:
        model = rebuild_with_split(args.run, model, spec, card)
        new = model_spec(model)
        card.update(inputs=new["inputs"], channels=new["channels"], beam_fwhm_arcmin=new["beam_fwhm_arcmin"],
                    noise_p_uk_arcmin=new["noise_p_uk_arcmin"])
    card["training"] = training_summary(args.run / "history.csv")
    if args.eval:
        card["measured"] = json.loads((args.eval / "summary.json").read_text())
    args.dest.mkdir(parents=True, exist_ok=True)
    save_model(model, args.dest / "model.keras", include_optimizer=False)
    (args.dest / "model.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    for name in ("config.yaml", "history.csv", "normalization.json"):
        shutil.copy2(args.run / name, args.dest / name)
    if args.sims_config:
        shutil.copy2(args.sims_config, args.dest / "sims.yaml")
    print(f"wrote {args.dest}/: {', '.join(sorted(p.name for p in args.dest.iterdir()))}")


if __name__ == "__main__":
    main()
