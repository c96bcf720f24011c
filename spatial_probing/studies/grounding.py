"""The grounding study: which ingredient of visual training teaches a text encoder spatial structure?

    python -m spatial_probing.studies.grounding --arms mlm text_pair clip_onehot contrastive --seeds 0 1 2 3 4 \
        --out_dir outputs/grounding/study [--steps 3000] [--train_args "--data.batch_size 64"] [--demo]

1. ``train-grounding`` per (arm, seed) into ``<out_dir>/runs/<arm>/seed<k>`` (a finished run is reused).
   Every run scores the structure and swap tests on the probe scenes at each validation: the
   learning curves (``tables/learning_curves.csv``).
2. Held-out probe scenes (unseen colour-shape pairs and object counts) are written as a VSR-format
   directory ``<out_dir>/probe_scenes`` with four captions per scene (caption, converse paraphrase,
   contradiction, argument swap; extra columns ``scene`` and ``kind``).
3. Text features of every checkpoint (and of a random-init copy: the untrained-architecture control)
   go through the normal extraction path: ``spatial-probing extract --model.encoder local:<ckpt>``.
4. Probes through the normal fit path (``relation_type``; ``caption_truth`` from text alone, a
   language-prior control that is at chance by construction), grouped folds by scene.
5. Structure and argument-swap scores (``grounding/structure_scores.py``), two-level bootstrap intervals
   (``resampling``: seeds, i.e. training runs, resampled, then items, i.e. scenes or folds, so intervals
   include run-to-run variation), paired comparisons (the same resampled seeds and items; two-sided
   bootstrap p-values)
   of every arm against the reference arms (``grounding.arms.REFERENCES``) and along every one-ingredient
   contrast (``grounding.arms.INGREDIENTS``), Holm over relations; the answer is written from those
   comparisons, whatever they say; ``report.md`` / ``report.html`` with the decomposition and
   learning-curve figures.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spatial_probing import resampling
from spatial_probing.analysis.features import bag_of_words
from spatial_probing.cli import main as cli_main
from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import SpatialProbingError
from spatial_probing.features.entry import load_entry
from spatial_probing.features.runs import recorded_hit
from spatial_probing.grounding import scenes as S
from spatial_probing.grounding import structure_scores as scores
from spatial_probing.grounding.arms import ARMS, CONFIGS, INGREDIENTS, REFERENCES, available_arms
from spatial_probing.io import atomic_write
from spatial_probing.probes.stats import holm
from spatial_probing.report.figures import ReportFigure
from spatial_probing.studies.command import run_study_command, study_parser
from spatial_probing.studies.report import write_report

CONTROL = "random-init"
TRAINER = str(Path(__file__).resolve().parents[2] / "configs" / "trainer" / "cpu.yaml")
QUIET = ["--trainer.enable_progress_bar", "false"]
TEST_TITLES = {"structure": "structure (converse nearer than contradiction)",
               "swap": "argument swap (converse nearer than swap)"}


def check_arms(arms: list[str], seeds: list[int]) -> None:
    """Refuse unknown or repeated arms and repeated seeds, naming the option and the valid arms."""
    valid = available_arms()
    if unknown := [a for a in arms if a not in valid]:
        raise SpatialProbingError(f"--arms: no arm config {unknown} under {CONFIGS}; valid arms: {', '.join(valid)}")
    for option, values in (("--arms", arms), ("--seeds", seeds)):
        if len(set(values)) != len(values):
            raise SpatialProbingError(f"{option} lists {sorted({v for v in values if values.count(v) > 1})} more "
                                      "than once; give each once")


# -- 1. training -------------------------------------------------------------------------------
def train_runs(arms: list[str], seeds: list[int], out: Path, steps: int, extra: list[str], n_probe: int,
               probe_seed: int, configs: tuple[Path, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (or reuse) every (arm, seed): one row per run with its summary, and the learning curves.

    ``configs`` are read after ``base.yaml`` and before the arm's own file (the transfer study's shared file)."""
    records, curves = [], []
    for arm in arms:
        for seed in seeds:
            run = out / "runs" / arm / f"seed{seed}"
            if not (run / "summary.json").is_file():
                if run.exists():  # interrupted: training is deterministic under its seed, so a restart gives the same run
                    print(f"[study] {arm} seed {seed}: {run} holds an unfinished run (no summary.json); "
                          "training it again from step 0", flush=True)
                args = ["train-grounding", *[a for c in configs for a in ("--config", str(c))],
                        "--config", str(CONFIGS / f"{arm}.yaml"), "--seed_everything", str(seed),
                        "--trainer.max_steps", str(steps), "--out_dir", str(run),
                        "--data.n_probe", str(n_probe), "--data.probe_seed", str(probe_seed),
                        "--trainer.logger.init_args.save_dir", str(run), *QUIET, *extra]
                print(f"[study] training {arm} seed {seed}: {shlex.join(args)}", flush=True)
                if cli_main(args) != 0:
                    raise SpatialProbingError(f"training {arm} seed {seed} failed; see the output above")
            summary = json.loads((run / "summary.json").read_text())
            final = summary["history"][-1] if summary["history"] else {}
            records.append({"arm": arm, "seed": seed, "steps": summary["steps"],
                            "samples_per_s": summary["samples_per_s"], "left_chance_step": summary["left_chance_step"],
                            **{f"final {k}": v for k, v in final.items() if k != "step"},
                            "checkpoint": str(Path(summary["checkpoint"]).resolve()),
                            "sbert": summary.get("sbert")})
            curves += [{"arm": arm, "seed": seed, "step": h["step"], "test": test, "value": h[f"probe/{test}"]}
                       for h in summary["history"] for test in scores.TESTS if f"probe/{test}" in h]
    runs = pd.DataFrame(records)
    runs["left_chance_step"] = runs.left_chance_step.astype("Int64")  # integer steps; <NA>: never (or no tower)
    return runs, pd.DataFrame(curves, columns=["arm", "seed", "step", "test", "value"])


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
def extract(encoder: str, dataset: str, feature_root: Path, split: str = "test") -> Path:
    """Text features of ``dataset``/``split`` through ``spatial-probing extract``; the entry's directory."""
    args = ["extract", "--config", TRAINER, "--model.encoder", encoder, "--data.dataset", dataset,
            "--data.split", split, "--feature_root", str(feature_root), *QUIET]
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


# -- 5. statistics -----------------------------------------------------------------------------
def comparison_pairs(arms: list[str], references: tuple[str, ...] = REFERENCES) -> list[tuple[str, str]]:
    """(arm_a, arm_b) pairs compared (diff = arm_b - arm_a): every one-ingredient contrast whose arms both
    ran, then every arm against each reference arm that ran; each unordered pair once."""
    pairs = [(i.base, i.arm) for i in INGREDIENTS if i.base in arms and i.arm in arms]
    pairs += [(ref, arm) for ref in references if ref in arms for arm in arms if arm != ref]
    seen: set[frozenset[str]] = set()
    return [p for p in pairs if not (frozenset(p) in seen or seen.add(frozenset(p)))]


def _matrix(frame: pd.DataFrame, seeds: list[int], item: str, value: str) -> np.ndarray:
    """[seeds, items] of one arm's ``value`` (rows per seed sorted by ``item``)."""
    return np.stack([frame[frame.seed == s].sort_values(item)[value].to_numpy() for s in seeds])


def summarise(items: pd.DataFrame, arms: list[str], pairs: list[tuple[str, str]], keys: list[str], item: str,
              n_boot: int, level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (arm, *keys): estimate and interval; per compared pair and *keys: paired difference (arm_b - arm_a),
    its interval, p and Holm p (over the last key's values of one pair)."""
    stats, comparisons = [], []
    for key, group in items.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mats = {}
        for arm in arms:
            part = group[group.arm == arm]
            if part.empty:
                continue  # an arm without this measure (a probe baseline has no structure score)
            seeds = sorted(part.seed.unique())
            mats[arm] = _matrix(part, seeds, item, "value")
            est, lo, hi = resampling.interval(mats[arm], n_boot, level, seed=0)
            stats.append({"arm": arm, **dict(zip(keys, key, strict=True)), "estimate": est, "ci_low": lo,
                          "ci_high": hi, "n_seeds": len(seeds), "n_items": mats[arm].shape[1]})
        for a, b in pairs:
            if a not in mats or b not in mats or mats[a].shape != mats[b].shape:
                continue  # not both measured, or unpaired (different seeds): no paired comparison
            diff, lo, hi, p = resampling.paired_difference(mats[b], mats[a], n_boot, level, seed=0)
            comparisons.append({"arm_a": a, "arm_b": b, **dict(zip(keys, key, strict=True)), "diff": diff,
                                "ci_low": lo, "ci_high": hi, "p_value": p})
    comp = pd.DataFrame(comparisons)
    if not comp.empty:  # Holm over the targets (the last key) of one comparison
        family = ["arm_a", "arm_b", *keys[:-1]]
        comp["p_holm"] = comp.groupby(family)["p_value"].transform(lambda p: holm(p.to_numpy()))
        comp["significant"] = comp.p_holm < 1 - level
    return pd.DataFrame(stats), comp


def structure_frame(entries: dict[tuple[str, int], Path]) -> tuple[pd.DataFrame, SpatialRows]:
    """Structure and swap item scores of every entry, plus the item-mean rows (relation ``mean``)."""
    frames, rows = [], None
    for (arm, seed), path in entries.items():
        entry = load_entry(path)
        rows = entry.rows
        frames.append(scores.structure_items(np.asarray(entry.features), rows).assign(arm=arm, seed=seed))
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


# -- 6. the answer -----------------------------------------------------------------------------
def _effect(comparisons: pd.DataFrame, a: str, b: str, test: str) -> pd.Series | None:
    """The item-mean comparison row of ``b - a`` on ``test`` (None when the pair was not compared)."""
    rows = comparisons[(comparisons.arm_a == a) & (comparisons.arm_b == b) & (comparisons.test == test)
                       & (comparisons.relation == "mean")] if not comparisons.empty else comparisons
    return rows.iloc[0] if len(rows) else None


def _cell(row: pd.Series, level: float) -> str:
    """``+0.123 (95% CI ..., Holm p=..., significant)`` of a comparison row."""
    word = "significant" if row["significant"] else "not significant"
    return (f"{row['diff']:+.3f} ({level:.0%} CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, "
            f"Holm p={row['p_holm']:.3g}, {word})")


def ingredient_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """One row per (ingredient that ran, test): its paired effect on the item-mean score."""
    rows = []
    for ing in INGREDIENTS:
        for test in scores.TESTS:
            if (row := _effect(comparisons, ing.base, ing.arm, test)) is not None:
                rows.append({"ingredient": ing.name, "arm": ing.arm, "minus": ing.base, "test": test,
                             "diff": row["diff"], "ci_low": row.ci_low, "ci_high": row.ci_high,
                             "p_holm": row.p_holm, "significant": bool(row.significant)})
    return pd.DataFrame(rows, columns=["ingredient", "arm", "minus", "test", "diff", "ci_low", "ci_high",
                                       "p_holm", "significant"])


def answer(comparisons: pd.DataFrame, stats: pd.DataFrame, level: float) -> list[str]:
    """The report's answer, from the paired comparisons only: per test, which ingredient moves the score by how
    much, and how the visual arm's total gain over masked-LM splits into pairing and pixels."""
    out = []
    ingredients = ingredient_table(comparisons)
    for test in scores.TESTS:
        t = ingredients[ingredients.test == test]
        if t.empty:
            out.append(f"**{TEST_TITLES[test]}:** no two arms of a one-ingredient contrast ran; nothing to decompose.")
            continue
        effects = "; ".join(f"{r.ingredient} ({r.arm} − {r.minus}) {_cell(r, level)}" for _, r in t.iterrows())
        found = t[t.significant].assign(size=lambda d: d["diff"].abs()).sort_values("size", ascending=False)
        lead = (f"the largest detectable effect is {found.iloc[0].ingredient} ({found.iloc[0]['diff']:+.3f})"
                if len(found) else "no ingredient has a detectable effect")
        text = f"**{TEST_TITLES[test]}:** {lead}. Per ingredient: {effects}."
        total = _effect(comparisons, "mlm", "contrastive", test)
        pairing, pixels = _effect(comparisons, "mlm", "text_pair", test), _effect(comparisons, "text_pair", "contrastive", test)
        if total is not None and pairing is not None and pixels is not None:
            if total.significant and total["diff"] != 0:
                text += (f" Visual training's total effect (contrastive − mlm) is {_cell(total, level)}; of it, pairing "
                         f"without images accounts for {pairing['diff']:+.3f} ({pairing['diff'] / total['diff']:.0%}) and "
                         f"pixels over a paired caption for {pixels['diff']:+.3f} ({pixels['diff'] / total['diff']:.0%}).")
            else:
                text += f" Visual training's total effect (contrastive − mlm), {_cell(total, level)}, is not detectable, so there is nothing to split."
        out.append(text)
    return out


def convergence(curves: pd.DataFrame, tolerance: float = 0.02) -> str:
    """Whether the learning curves have flattened: the change of each arm's seed-mean score over the last
    fifth of training, against ``tolerance``."""
    moving = []
    for (arm, test), c in curves.groupby(["arm", "test"], sort=False):
        mean = c.groupby("step")["value"].mean()
        at = mean.index.max() * 0.8
        change = mean.iloc[-1] - mean[mean.index <= at].iloc[-1] if (mean.index <= at).any() else np.nan
        if not abs(change) <= tolerance:
            moving.append(f"{arm} {test} {change:+.3f}")
    if not moving:
        return (f"Convergence: every arm's seed-mean curve moved by at most {tolerance} over the last fifth of "
                "training (learning-curve figure).")
    return (f"Convergence: **not converged** — curves still moving by more than {tolerance} over the last fifth of "
            f"training (change from 80% of the steps to the end): {'; '.join(moving)}. Train longer (--steps) "
            "before reading these arms' differences as final.")


# -- 7. figures --------------------------------------------------------------------------------
def score_panel(ax: object, test: str, order: list[str], xlabel: str) -> None:
    """Finish one test's panel of arms (top to bottom in ``order``) x score: chance line, limits, labels, legend."""
    ax.axvline(0.5, color="#999", ls="--", lw=1, label="chance")
    ax.set_xlim(-0.02, 1.02)
    ax.set_yticks(np.arange(len(order))[::-1], order)
    ax.set_title(TEST_TITLES[test], fontsize=10)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8, loc="lower right")


def decomposition_figure(stats: pd.DataFrame, arms: list[str], bow: pd.Series, level: float) -> ReportFigure:
    """Arms x score (item mean) with intervals, one panel per test; chance and the bag of words marked."""
    order = [*arms, CONTROL]
    fig = Figure(figsize=(10, 0.35 * len(order) + 1.6))
    axes = fig.subplots(1, len(scores.TESTS), sharey=True)
    for ax, test in zip(axes, scores.TESTS, strict=True):
        t = stats[(stats.test == test) & (stats.relation == "mean")].set_index("arm").loc[order]
        y = np.arange(len(order))[::-1]
        ax.errorbar(t.estimate, y, xerr=[t.estimate - t.ci_low, t.ci_high - t.estimate], fmt="o", color="#3b6fb6",
                    ecolor="#3b6fb6", capsize=3)
        ax.axvline(bow[test], color="#e08a2c", ls=":", lw=1.5, label=f"bag of words ({bow[test]:.2f})")
        score_panel(ax, test, order, "score on held-out probe scenes")
    fig.tight_layout()
    return ReportFigure("decomposition", "Decomposition: every arm's structure and swap scores",
                        f"Item means over seeds and held-out scenes, {level:.0%} two-level bootstrap intervals "
                        "(seeds, then scenes). Arms differ from their neighbours in one ingredient (docs/grounding.md).",
                        fig)


def learning_curve_figure(curves: pd.DataFrame, arms: list[str]) -> ReportFigure:
    """Score against training step per arm: the mean over seeds, the band spanning the seeds."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, len(scores.TESTS), sharey=True)
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for ax, test in zip(axes, scores.TESTS, strict=True):
        for arm in arms:
            c = curves[(curves.arm == arm) & (curves.test == test)].groupby("step")["value"]
            if c.ngroups == 0:
                continue
            steps = np.asarray(list(c.groups))
            ax.plot(steps, c.mean().to_numpy(), color=colours[arm], label=arm, lw=1.5)
            ax.fill_between(steps, c.min().to_numpy(), c.max().to_numpy(), color=colours[arm], alpha=0.15, lw=0)
        ax.axhline(0.5, color="#999", ls="--", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(TEST_TITLES[test], fontsize=10)
        ax.set_xlabel("training step")
    axes[0].set_ylabel("score on the probe scenes")
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return ReportFigure("learning_curves", "Learning curves", "Structure and swap scores of pooled text features on "
                        "the held-out probe scenes at every validation; line: mean over seeds, band: the seeds' range. "
                        "The last point of each run is the study's score of its saved checkpoint.", fig)


# -- 8. the study ------------------------------------------------------------------------------
def run_study(arms: list[str], seeds: list[int], out: Path, steps: int, extra: list[str], n_probe: int,
              probe_seed: int, n_boot: int, level: float, demo: bool = False) -> Path:
    """Every step of the study; returns the report path."""
    check_arms(arms, seeds)
    if out.exists() and not out.is_dir():
        raise SpatialProbingError(f"--out_dir {out} is a file, not a directory")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    runs, curves = train_runs(arms, seeds, out, steps, extra, n_probe, probe_seed)
    probe_dir = write_probe_scenes(out, n_probe, probe_seed)
    feature_root = out / "features"
    encoders = {(r.arm, r.seed): f"local:{r.checkpoint}@text" for r in runs.itertuples()}
    # the untrained control: the first arm's text architecture with seeded random weights (identical for all arms)
    encoders |= {(CONTROL, s): f"local:{runs.checkpoint.iloc[0]}@text+random-init" for s in seeds[:1]}
    entries = {key: extract(name, str(probe_dir), feature_root) for key, name in encoders.items()}
    labels = {path.name: key for key, path in entries.items()}

    structure_items, rows = structure_frame(entries)
    bow_scores = scores.structure_items(bag_of_words(rows).x, rows).groupby("test")["score"].mean()
    probes = pd.concat([probe_frame(fit("relation_type", list(entries.values()), out), labels, "f1_macro"),
                        probe_frame(fit("caption_truth", list(entries.values()), out), labels, "accuracy")])
    pairs = comparison_pairs(arms)
    s_stats, s_comp = summarise(structure_items, [*arms, CONTROL], pairs, ["test", "relation"], "item", n_boot, level)
    p_stats, p_comp = summarise(probes, [*arms, CONTROL], pairs, ["task", "target"], "fold", n_boot, level)
    ingredients = ingredient_table(s_comp)
    tables = out / "tables"
    for name, frame in {"runs": runs, "learning_curves": curves, "structure_stats": s_stats,
                        "structure_comparisons": s_comp, "ingredients": ingredients, "probe_stats": p_stats,
                        "probe_comparisons": p_comp}.items():
        atomic_write(tables / f"{name}.csv", frame.to_csv(index=False))

    wall = time.perf_counter() - started
    per_seed = structure_items[structure_items.relation == "mean"].groupby(["arm", "seed", "test"])["value"].mean()
    scale = (f"**This is the demo** ({len(arms)} arms, {len(seeds)} seeds, {steps} steps): a small-scale run to "
             "show the pipeline; quote only the full study (`make grounding-study`)." if demo else
             f"Full scale: {len(arms)} arms, {len(seeds)} seeds, {steps} steps each.")
    blocks: list[tuple[str, object]] = [
        ("h1", "Which ingredient of visual training teaches a small text encoder spatial structure?"),
        ("p", scale),
        ("figure", decomposition_figure(s_stats, arms, bow_scores, level)),
        ("h2", "Answer"),
        *[("p", line) for line in answer(s_comp, s_stats, level)],
        ("p", _probe_sentence(p_stats)),
        *([("p", f"Caution: only {len(seeds)} seeds per arm. The seed level of the bootstrap can only resample "
                 "those runs, so intervals understate run-to-run variation; run 5 or more seeds "
                 "(--seeds) before quoting a difference.")] if len(seeds) < 5 else []),
        ("p", f"Set-up: arms {', '.join(arms)}; seeds {seeds}; {steps} steps each (the same tokenizer, text "
              f"architecture, optimiser, steps, seeds and captions; arms differ in their second tower and "
              f"objective only, docs/grounding.md). Probe set: {n_probe} held-out scenes (unseen colour-shape pairs "
              f"{[' '.join(p) for p in S.HELD_OUT_PAIRS]} and object counts {list(S.HELD_OUT_COUNTS)}), "
              f"{len(rows)} captions. Intervals: {level:.0%} two-level bootstrap over seeds and items ({n_boot} "
              f"resamples); paired comparisons, Holm-corrected over relations. Baselines on the same scenes: bag of "
              f"words structure {bow_scores['structure']:.3f} (a tie by construction), swap {bow_scores['swap']:.3f}; "
              f"untrained ({CONTROL}) encoder in the tables. Chance is 0.5 for both tests. Wall time "
              f"{wall:.0f} s (runs reused from an earlier invocation cost nothing here)."),
        ("h2", "One-ingredient contrasts (item-mean score; diff = arm − minus)"),
        ("table", ingredients),
        ("figure", learning_curve_figure(curves, arms)),
        ("p", convergence(curves)),
        ("h2", "Training: throughput and when tower-caption retrieval left chance"),
        ("p", "left_chance_step: first validation step whose in-distribution retrieval (true caption vs its "
              "contradiction) exceeded 0.5 by 3 binomial standard errors; empty: never within the run. "
              "Text-only runs have no tower, hence no retrieval."),
        ("table", runs.drop(columns=["checkpoint", "sbert"])),
        ("h2", "Structure tests per arm and relation"),
        ("table", s_stats),
        ("h2", "Structure tests per seed (item mean)"),
        ("table", per_seed.unstack("test").reset_index()),
        ("h2", "Paired comparisons (structure tests; diff = arm_b − arm_a)"),
        ("table", s_comp),
        ("h2", "Probes: relation type (macro-F1) and caption truth from text alone (accuracy; chance by "
               "construction, the language-prior control)"),
        ("table", p_stats),
        ("table", p_comp),
    ]
    report = write_report(out, "Grounding study", blocks)
    print(f"[study] wall time {wall:.0f} s", flush=True)
    return report


def _probe_sentence(stats: pd.DataFrame) -> str:
    """One line of probe means per arm: relation type is lexical, caption truth from text alone is a control."""
    means = stats[stats.target.isin(["mean", "caption_truth"])].drop_duplicates(["arm", "task"])
    parts = {task: ", ".join(f"{r.arm} {r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                             for r in means[means.task == task].itertuples())
             for task in ("relation_type", "caption_truth")}
    return (f"Probes on the same captions: relation type (macro-F1; lexical, the relation words are in the caption) "
            f"{parts['relation_type']}; caption truth from text alone (accuracy; chance by construction) "
            f"{parts['caption_truth']}.")


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__spec__.name, __doc__, list(ARMS), [0, 1, 2, 3, 4], 3000, "outputs/grounding/study")
    parser.add_argument("--n_probe", type=int, default=400, help="held-out probe scenes (4 captions each)")
    parser.add_argument("--probe_seed", type=int, default=12345)
    return run_study_command(parser, argv, lambda a: run_study(
        a.arms, a.seeds, Path(a.out_dir), a.steps, shlex.split(a.train_args), a.n_probe, a.probe_seed, a.n_boot,
        a.level, a.demo))


if __name__ == "__main__":
    sys.exit(main())
