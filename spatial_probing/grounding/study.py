"""The grounding study: train every arm under several seeds, probe the held-out scenes' captions, report.

    python -m spatial_probing.grounding.study --arms mlm contrastive contrastive_hn --seeds 0 1 2 \
        --out_dir outputs/grounding/study [--steps 3000] [--train_args "--data.batch_size 64"]

1. ``train-grounding`` per (arm, seed) into ``<out_dir>/runs/<arm>/seed<k>`` (a finished run is reused).
2. Held-out probe scenes (unseen colour-shape pairs and object counts) are written as a VSR-format
   directory ``<out_dir>/probe_scenes`` with four captions per scene (caption, converse paraphrase,
   contradiction, argument swap; extra columns ``scene`` and ``kind``).
3. Text features of every checkpoint (and of a random-init copy: the untrained-architecture control)
   go through the normal extraction path: ``spatial-probing extract --model.encoder local:<ckpt>``.
4. Probes through the normal fit path (``relation_type``; ``caption_truth`` from text alone, a
   language-prior control that is at chance by construction), grouped folds by scene.
5. Structure and argument-swap scores, zero-shot image-caption truth of the visual arms, two-level
   bootstrap intervals, paired arm comparisons with Holm correction, and ``report.md``/``report.html``.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_probing.analysis.features import bag_of_words
from spatial_probing.cli import main as cli_main
from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import SpatialProbingError
from spatial_probing.features.runs import recorded_hit
from spatial_probing.features.store import load_entry
from spatial_probing.grounding import analysis
from spatial_probing.grounding import scenes as S
from spatial_probing.io import atomic_write
from spatial_probing.probes.stats import holm

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "grounding"
CONTROL = "random-init"
TRAINER = str(Path(__file__).resolve().parents[2] / "configs" / "trainer" / "cpu.yaml")
QUIET = ["--trainer.enable_progress_bar", "false"]


# -- 1. training -------------------------------------------------------------------------------
def train_runs(arms: list[str], seeds: list[int], out: Path, steps: int, extra: list[str]) -> pd.DataFrame:
    """Train (or reuse) every (arm, seed); one row per run with its summary."""
    records = []
    for arm in arms:
        for seed in seeds:
            run = out / "runs" / arm / f"seed{seed}"
            if not (run / "summary.json").is_file():
                args = ["train-grounding", "--config", str(CONFIGS / f"{arm}.yaml"), "--seed_everything", str(seed),
                        "--trainer.max_steps", str(steps), "--out_dir", str(run),
                        "--trainer.logger.init_args.save_dir", str(run), *QUIET, *extra]
                print(f"[study] training {arm} seed {seed}: {shlex.join(args)}", flush=True)
                if cli_main(args) != 0:
                    raise SpatialProbingError(f"training {arm} seed {seed} failed; see the output above")
            summary = json.loads((run / "summary.json").read_text())
            final = summary["history"][-1] if summary["history"] else {}
            records.append({"arm": arm, "seed": seed, "steps": summary["steps"],
                            "samples_per_s": summary["samples_per_s"], "left_chance_step": summary["left_chance_step"],
                            **{f"final {k}": v for k, v in final.items() if k != "step"},
                            "checkpoint": str(Path(summary["checkpoint"]).resolve())})
    runs = pd.DataFrame(records)
    runs["left_chance_step"] = runs.left_chance_step.astype("Int64")  # integer steps; <NA>: never (or no images)
    return runs


# -- 2. probe scenes ---------------------------------------------------------------------------
def write_probe_scenes(out: Path, n: int, seed: int) -> Path:
    """Held-out scenes as a VSR-format directory (``test.jsonl`` + ``images/``); reused when present."""
    from PIL import Image

    directory = out / "probe_scenes"
    if (directory / "test.jsonl").is_file():
        return directory
    scenes = S.generate(n, seed, "heldout")
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(scenes):
        name = f"scene_{i:05d}.png"
        Image.fromarray(scene.image().transpose(1, 2, 0)).save(directory / "images" / name)
        for kind, (text, relation, label) in scene.captions().items():
            lines.append(json.dumps({"image": name, "image_link": None, "caption": text, "label": label,
                                     "relation": relation, "scene": i, "kind": kind,
                                     "n_objects": len(scene.objects)}))
    atomic_write(directory / "test.jsonl", "\n".join(lines) + "\n")  # written last: marks the directory complete
    return directory


# -- 3. extraction -----------------------------------------------------------------------------
def extract(encoder: str, probe_dir: Path, feature_root: Path) -> Path:
    """Text features of the probe captions through ``spatial-probing extract``; the entry's directory."""
    args = ["extract", "--config", TRAINER, "--model.encoder", encoder, "--data.dataset", str(probe_dir),
            "--data.split", "test", "--feature_root", str(feature_root), *QUIET]
    if cli_main(args) != 0:
        raise SpatialProbingError(f"extraction of {encoder} failed; see the output above")
    entry = recorded_hit(args[1:])  # the run record the extraction just wrote names its cache entry
    if entry is None:
        raise SpatialProbingError(f"no cache entry recorded for {encoder} under {feature_root} after extraction")
    return entry.path


# -- 4. probes ---------------------------------------------------------------------------------
TASKS = {  # the probe tasks of the study, as `fit` configures them (data.task)
    "relation_type": {"class_path": "spatial_probing.tasks.relation_type.RelationType", "init_args": {"min_count": 10}},
    "caption_truth": {"class_path": "spatial_probing.tasks.caption_truth.CaptionTruth"},
}


def fit(task: str, entries: list[Path], out: Path) -> pd.DataFrame:
    """Probe ``task`` on every entry through ``spatial-probing fit`` (grouped folds by scene)."""
    args = ["fit", "--data.features", json.dumps([str(e) for e in entries]), "--data.task", json.dumps(TASKS[task]),
            "--data.folds", "grouped", "--model.class_weight", "balanced",
            "--model.Cs", "[1.0]", "--trainer.logger", "false", "--out_dir", str(out / "probes" / task), *QUIET]
    if cli_main(args) != 0:
        raise SpatialProbingError(f"probing {task} failed; see the output above")
    return pd.read_csv(out / "probes" / task / "results.csv")


# -- 5. analysis -------------------------------------------------------------------------------
def _matrix(frame: pd.DataFrame, seeds: list[int], item: str, value: str) -> np.ndarray:
    """[seeds, items] of one arm's ``value`` (rows per seed sorted by ``item``)."""
    return np.stack([frame[frame.seed == s].sort_values(item)[value].to_numpy() for s in seeds])


def summarise(items: pd.DataFrame, arms: list[str], keys: list[str], item: str, n_boot: int, level: float
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (arm, *keys): estimate and interval; per (arm pair, *keys, in ``arms`` order): paired difference
    (later arm minus earlier arm), p and Holm p."""
    stats, comparisons = [], []
    for key, group in items.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mats = {}
        for arm in arms:
            part = group[group.arm == arm]
            seeds = sorted(part.seed.unique())
            mats[arm] = _matrix(part, seeds, item, "value")
            est, lo, hi = analysis.interval(mats[arm], n_boot, level, seed=0)
            stats.append({"arm": arm, **dict(zip(keys, key, strict=True)), "estimate": est, "ci_low": lo,
                          "ci_high": hi, "n_seeds": len(seeds), "n_items": mats[arm].shape[1]})
        for i, a in enumerate(arms):
            for b in arms[i + 1:]:
                if a == CONTROL or b == CONTROL or mats[a].shape != mats[b].shape:
                    continue
                diff, lo, hi, p = analysis.paired_difference(mats[b], mats[a], n_boot, level, seed=0)
                comparisons.append({"arm_a": a, "arm_b": b, **dict(zip(keys, key, strict=True)), "diff": diff,
                                    "ci_low": lo, "ci_high": hi, "p_value": p})
    comp = pd.DataFrame(comparisons)
    if not comp.empty:  # Holm over the targets (all but the last key) of one comparison
        family = ["arm_a", "arm_b", *keys[:-1]] if len(keys) > 1 else ["arm_a", "arm_b"]
        comp["p_holm"] = comp.groupby(family)["p_value"].transform(lambda p: holm(p.to_numpy()))
        comp["significant"] = comp.p_holm < 1 - level
    return pd.DataFrame(stats), comp


def structure_frame(entries: dict[tuple[str, int], Path]) -> tuple[pd.DataFrame, SpatialRows]:
    """Structure and swap item scores of every entry, plus the relation-mean rows (target ``mean``)."""
    frames, rows = [], None
    for (arm, seed), path in entries.items():
        entry = load_entry(path)
        rows = entry.rows
        frames.append(analysis.structure_items(np.asarray(entry.features), rows).assign(arm=arm, seed=seed))
    items = pd.concat(frames, ignore_index=True).rename(columns={"score": "value"})
    mean = items.groupby(["arm", "seed", "test", "item"], as_index=False)["value"].mean().assign(relation="mean")
    return pd.concat([items, mean], ignore_index=True), rows


def probe_frame(results: pd.DataFrame, labels: dict[str, tuple[str, int]], metric: str) -> pd.DataFrame:
    """Per-fold ``metric`` rows of one task labelled with (arm, seed) by their cache ``entry``; fold means per
    target, plus ``mean``."""
    part = results[results.metric == metric].copy()
    part[["arm", "seed"]] = [labels[e] for e in part.entry]
    per_target = part[["arm", "seed", "task", "target", "fold", "value"]]
    mean = per_target.groupby(["arm", "seed", "task", "fold"], as_index=False)["value"].mean().assign(target="mean")
    return pd.concat([per_target, mean], ignore_index=True)


# -- report ------------------------------------------------------------------------------------
def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda c: c.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v))


def _markdown(df: pd.DataFrame) -> str:
    df = _fmt(df)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def answer(comparisons: pd.DataFrame, stats: pd.DataFrame, text_arm: str, level: float) -> list[str]:
    """The report's answer, one paragraph per visual arm, from the structure comparisons against the text arm."""
    out = []
    for visual in [a for a in stats.arm.unique() if a not in (text_arm, CONTROL)]:
        rows = comparisons[(comparisons.arm_a == text_arm) & (comparisons.arm_b == visual)]
        for test in analysis.TESTS:
            t = rows[rows.test == test]
            mean = t[t.relation == "mean"].iloc[0]
            per = t[t.relation != "mean"]
            better = per[per.significant & (per["diff"] > 0)].relation.tolist()
            worse = per[per.significant & (per["diff"] < 0)].relation.tolist()
            verdict = ("yes" if mean.significant and mean["diff"] > 0 else
                       "no, it is worse" if mean.significant and mean["diff"] < 0 else
                       "no detectable difference")
            out.append(
                f"**{visual} vs {text_arm}, {test} test: {verdict}.** Mean difference {mean['diff']:+.3f} "
                f"({level:.0%} CI {mean.ci_low:+.3f} to {mean.ci_high:+.3f}, p={mean.p_value:.3g}); significantly "
                f"better on {', '.join(better) or 'no relation'}, worse on {', '.join(worse) or 'no relation'} "
                f"(Holm-corrected over {len(per)} relations)."
            )
    return out


def _probe_sentence(stats: pd.DataFrame) -> str:
    """One line of probe means per arm: relation type is lexical, caption truth from text alone is a control."""
    means = stats[stats.target.isin(["mean", "caption_truth"])].drop_duplicates(["arm", "task"])
    parts = {task: ", ".join(f"{r.arm} {r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                             for r in means[means.task == task].itertuples())
             for task in ("relation_type", "caption_truth")}
    return (f"Probes on the same captions: relation type (macro-F1; lexical, the relation words are in the caption) "
            f"{parts['relation_type']}; caption truth from text alone (accuracy; chance by construction) "
            f"{parts['caption_truth']}.")


def write_report(out: Path, blocks: list[tuple[str, object]]) -> None:
    """``report.md`` and ``report.html`` from (kind, content) blocks: h1, h2, p, table."""
    md, page = [], ["<!doctype html><meta charset='utf-8'><title>Grounding study</title>",
                    "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
                    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"]
    for kind, content in blocks:
        if kind == "table":
            md.append(_markdown(content))
            page.append(_fmt(content).to_html(index=False, escape=True))
        else:
            prefix = {"h1": "# ", "h2": "## ", "p": ""}[kind]
            md.append(prefix + str(content))
            body = html.escape(str(content)).replace("**", "")
            page.append(f"<{kind}>{body}</{kind}>" if kind != "p" else f"<p>{body}</p>")
    atomic_write(out / "report.md", "\n\n".join(md) + "\n")
    atomic_write(out / "report.html", "\n".join(page) + "\n")


def run_study(arms: list[str], seeds: list[int], out: Path, steps: int, extra: list[str], n_probe: int,
              probe_seed: int, n_boot: int, level: float) -> Path:
    """Every step of the study; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    runs = train_runs(arms, seeds, out, steps, extra)
    probe_dir = write_probe_scenes(out, n_probe, probe_seed)
    feature_root = out / "features"
    encoders = {(r.arm, r.seed): f"local:{r.checkpoint}@text" for r in runs.itertuples()}
    # the untrained control: the first arm's architecture with seeded random weights (identical for all arms)
    encoders |= {(CONTROL, s): f"local:{runs.checkpoint.iloc[0]}@text+random-init" for s in seeds[:1]}
    entries = {key: extract(name, probe_dir, feature_root) for key, name in encoders.items()}
    labels = {path.name: key for key, path in entries.items()}

    structure_items, rows = structure_frame(entries)
    bow = analysis.structure_items(bag_of_words(rows).x, rows)
    bow_scores = bow.groupby("test")["score"].mean()
    probes = pd.concat([probe_frame(fit("relation_type", list(entries.values()), out), labels, "f1_macro"),
                        probe_frame(fit("caption_truth", list(entries.values()), out), labels, "accuracy")])
    order = [*arms, CONTROL]
    s_stats, s_comp = summarise(structure_items, order, ["test", "relation"], "item", n_boot, level)
    p_stats, p_comp = summarise(probes, order, ["task", "target"], "fold", n_boot, level)
    tables = out / "tables"
    for name, frame in {"runs": runs, "structure_stats": s_stats, "structure_comparisons": s_comp,
                        "probe_stats": p_stats, "probe_comparisons": p_comp}.items():
        atomic_write(tables / f"{name}.csv", frame.to_csv(index=False))

    text_arm = next((a for a in arms if "mlm" in a), arms[0])
    n_items = int(s_stats.n_items.max())
    per_seed = structure_items[structure_items.relation == "mean"].groupby(["arm", "seed", "test"])["value"].mean()
    blocks: list[tuple[str, object]] = [
        ("h1", "Does visual training change what a small text encoder knows about space?"),
        ("p", f"Arms: {', '.join(arms)}; seeds {seeds}; {steps} steps each (the same tokenizer, architecture, "
              f"steps, seeds and captions; only the objective differs). Probe set: {n_probe} held-out scenes "
              f"(unseen colour-shape pairs {[' '.join(p) for p in S.HELD_OUT_PAIRS]} and object counts "
              f"{list(S.HELD_OUT_COUNTS)}), {len(rows)} captions. Intervals: {level:.0%} two-level bootstrap "
              f"over seeds and items ({n_boot} resamples); paired comparisons, Holm-corrected over relations."),
        ("h2", "Answer: does the visual arm encode spatial relations better than the text-only arm?"),
        *[("p", line) for line in answer(s_comp, s_stats, text_arm, level)],
        ("p", _probe_sentence(p_stats)),
        *([("p", f"Caution: only {len(seeds)} seeds per arm. The seed level of the bootstrap can only resample "
                 "those runs, so intervals understate run-to-run variation; run more seeds "
                 "(--seeds) before quoting a difference.")] if len(seeds) < 5 else []),
        ("p", f"Baselines on the same {n_items} scenes: bag of words structure {bow_scores['structure']:.3f} "
              f"(a tie by construction), swap {bow_scores['swap']:.3f}; untrained ({CONTROL}) encoder in the "
              "tables below. Chance is 0.5 for both tests."),
        ("h2", "Training: throughput and when image-caption retrieval left chance"),
        ("p", "left_chance_step: first validation step whose in-distribution retrieval (true caption vs its "
              "contradiction) exceeded 0.5 by 3 binomial standard errors; empty: never within the run. "
              "Text-only runs have no image tower, hence no retrieval."),
        ("table", runs.drop(columns=["checkpoint"])),
        ("h2", "Structure tests per arm (paraphrase nearer than contradiction / than argument swap)"),
        ("table", s_stats),
        ("h2", "Structure tests per seed (mean over relations)"),
        ("table", per_seed.unstack("test").reset_index()),
        ("h2", "Paired comparisons between arms (structure tests; diff = arm_b - arm_a)"),
        ("table", s_comp),
        ("h2", "Probes: relation type (macro-F1) and caption truth from text alone (accuracy; chance by "
               "construction, the language-prior control)"),
        ("table", p_stats),
        ("table", p_comp),
    ]
    write_report(out, blocks)
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    # spinning OpenMP threads made training 14x slower on a shared 2-core machine (measured); the user's setting wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["mlm", "contrastive", "contrastive_hn"],
                        help="config names under configs/grounding (the text-only arm's name contains 'mlm').")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every run")
    parser.add_argument("--train_args", default="", help="extra train-grounding options for every run (quoted)")
    parser.add_argument("--n_probe", type=int, default=400, help="held-out probe scenes (4 captions each)")
    parser.add_argument("--probe_seed", type=int, default=12345)
    parser.add_argument("--n_boot", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--out_dir", default="outputs/grounding/study")
    a = parser.parse_args(argv)
    try:
        report = run_study(a.arms, a.seeds, Path(a.out_dir), a.steps, shlex.split(a.train_args), a.n_probe,
                           a.probe_seed, a.n_boot, a.level)
    except SpatialProbingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((report).read_text())
    print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
