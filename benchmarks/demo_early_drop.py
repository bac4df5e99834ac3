"""Why does the demo student lose validation accuracy in the first OPD steps, even under Stable-OPD? (issue 18)

Runs `demo_stable_opd` from seed 0 for 10 steps with validation at every step on 128 prompts, sampled (T=1) and
greedy, in arms that each change one thing, then prints the per-step accuracy, golden-SFT loss and gradient norm
and draws them (docs/img/demo_early_drop.png and .html). The "self" arms use the initial student as the teacher: the
OPD advantage starts at exactly 0, so whatever they lose is the update itself (lr, Adam, the KL and SFT terms),
not the teacher's signal.

    python benchmarks/demo_early_drop.py                 # train the arms (1 thread each), then the table + figure
    python benchmarks/demo_early_drop.py --reuse         # only the table + figure from the runs already there
    python benchmarks/demo_early_drop.py --model-acc DIR...   # sampled and greedy accuracy of model directories
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from opdwatch import open_run
from opdwatch.comparison import VAL_GREEDY_ACCURACY
from opdwatch.metric_defs import VAL_ACCURACY
from opdwatch.series import step_series

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
COMMON = ["run.progress=false", "run.threads=1", "run.seed=0", "opd.steps=10", "val.every=1", "val.greedy_too=true",
          "checkpoint.every=0"]
SELF = "models.teacher=SELF"  # replaced by the student's directory
# name -> overrides of demo_stable_opd (lr 3e-3, warm-up 5, beta 0.2, alpha 1)
ARMS: dict[str, list[str]] = {
    "stable": [],
    "self_lr3e-3": [SELF],
    "self_lr1e-3": [SELF, "opd.lr=1e-3"],
    "self_lr3e-4": [SELF, "opd.lr=3e-4"],
    "self_alpha5": [SELF, "opd.alpha=5"],
    "self_warmup20": [SELF, "opd.warmup_steps=20"],
}
PANELS = ((VAL_ACCURACY, "val accuracy, sampled T=1"), (VAL_GREEDY_ACCURACY, "val accuracy, greedy"),
          ("loss/sft", "golden-SFT NLL (nats/token)"), ("optim/grad_norm", "gradient norm (before clipping)"))


def student_dir() -> str:
    from opdwatch.trainer.config import load_config
    from opdwatch.trainer.recipes.demo.demo_teacher import ensure_demo_model

    return str(ensure_demo_model(load_config("demo_stable_opd"), "student"))


def train(out: Path, arms: list[str]) -> None:
    student = student_dir()
    for name in arms:
        overrides = [o.replace("SELF", student) for o in ARMS[name]]
        cmd = [sys.executable, "-m", "opdwatch.cli", "train", "demo_stable_opd", *COMMON, f"run.output_dir={out}",
               f"run.name={name}", *overrides, "--overwrite"]
        subprocess.run(cmd, check=True)


def table(out: Path, arms: list[str]) -> go.Figure:
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in PANELS])
    for i, name in enumerate(arms):
        if not (out / name / "manifest.json").exists():
            continue
        s = step_series(open_run(out / name)).sort("step")
        print(name)
        for k, (column, title) in enumerate(PANELS):
            if column not in s.columns:
                continue
            values = s.select("step", column).drop_nulls(column)
            print(f"  {title:34s} " + " ".join(f"{v:5.2f}" for v in values[column].to_list()))
            fig.add_trace(go.Scatter(x=values["step"].to_list(), y=values[column].to_list(), name=name,
                                     legendgroup=name, showlegend=k == 0, mode="lines+markers",
                                     line={"color": f"hsl({i * 360 // len(arms)},65%,45%)"}),
                          row=k // 2 + 1, col=k % 2 + 1)
    fig.update_layout(title="demo_stable_opd, seed 0: the first 10 steps (self = the initial student as teacher)",
                      width=1100, height=700)
    return fig


def model_accuracy(dirs: list[str], prompts: int = 256) -> None:
    """Sampled (T=1) and greedy accuracy and truncation of model directories on the first `prompts` validation
    prompts, through the trainer's own `validate` (1 thread, fixed generators)."""
    import torch

    from opdwatch.trainer.config import load_config
    from opdwatch.trainer.data.models import load_causal_lm, load_tokenizer
    from opdwatch.trainer.data.task import make_splits
    from opdwatch.trainer.loop.validation import validate
    from opdwatch.trainer.rollout.engine import SamplingParams
    from opdwatch.trainer.rollout.hf_engine import HFEngine

    torch.set_num_threads(1)
    val = make_splits(load_config("demo_opd").data).val[:prompts]
    for d in dirs:
        tok, model = load_tokenizer(d), load_causal_lm(d, trainable=False)
        engine = HFEngine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, stop_ids=(tok.eos_token_id,),
                          generator=torch.Generator().manual_seed(0))
        cells = []
        for name, temperature in (("T=1", 1.0), ("greedy", 0.0)):
            r = validate(engine, tok, val, SamplingParams(temperature, 1.0, 128), torch.Generator().manual_seed(1))
            truncated = sum(f == "length" for f in r.batch.finish_reasons) / len(val)
            cells.append(f"{name}: accuracy {sum(r.correct) / len(val):.3f}, truncation {truncated:.3f}")
        print(d, " | ".join(cells), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/early_drop"), help="parent of the runs")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--reuse", action="store_true", help="do not train; read the runs already in --out")
    ap.add_argument("--model-acc", nargs="+", metavar="DIR", help="only measure these model directories' accuracy")
    args = ap.parse_args(argv)
    if args.model_acc:
        model_accuracy(args.model_acc)
        return 0
    if not args.reuse:
        train(args.out, args.arms)
    fig = table(args.out, args.arms)
    IMG.mkdir(parents=True, exist_ok=True)
    fig.write_html(IMG / "demo_early_drop.html", include_plotlyjs="cdn")
    try:
        fig.write_image(IMG / "demo_early_drop.png", scale=1)
    except Exception as exc:  # noqa: BLE001 - kaleido/chromium missing: the HTML and the numbers remain
        print(f"PNG export unavailable: {type(exc).__name__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
