"""The transfer study: does grounded fine-tuning teach a real sentence encoder spatial structure that shows
on real VSR captions?

    python -m spatial_probing.studies.transfer --model minilm --arms mlm text_pair clip_onehot contrastive \
        --seeds 0 1 2 --out_dir outputs/transfer/minilm [--steps 1000] [--eval_rows N] [--demo]

1. ``train-grounding`` per (arm, seed) with ``configs/grounding/transfer/base.yaml`` (the pretrained model
   as the text tower, VSR-vocabulary scenes, the same captions, steps and optimiser for every arm) into
   ``<out_dir>/runs/<arm>/seed<k>``; each run saves its fine-tuned model as ``sbert/`` and its learning
   curves (structure and swap tests on held-out-noun VSR scenes at each validation).
2. Every fine-tuned model, the untouched model (``untouched``) and its random-init copy (``random-init``)
   go through the normal extraction path (``spatial-probing extract --model.encoder sbert:<dir>``) on
   ``derived:structure:`` triplets of VSR random dev and test and zero-shot test, and on VSR random test.
   ``--eval_rows N`` evaluates on a seeded subsample of N rows of each split (written as a VSR-format
   directory ``<out_dir>/vsr_eval``); by default every row.
3. Measures, item by item: the structure test (converse paraphrase nearer the caption than the
   contradiction) and the argument-swap test per split and per noun group: ``held_out`` (a noun of
   ``vsr_scenes.HELD_OUT_NOUNS``, never in a fine-tuning caption or image), ``seen`` (both nouns in
   ``TRAIN_NOUNS``), ``other`` (a noun the scenes never name); ``pooled/<group>`` joins the three splits.
   On VSR random test: odd-one-out trials, **retention** (per caption, the Spearman correlation of its
   cosine similarities to every other caption with the untouched model's: 1.0 for the untouched model)
   and RSA against the untouched model; the relation-type probe through ``spatial-probing fit`` with the
   majority and n-gram baselines and the subject control task (selectivity).
4. Two-level bootstrap intervals (seeds, then items) and paired comparisons of every arm against the
   untouched model, masked-LM and text-pair fine-tuning (and along the one-ingredient contrasts that
   ran), Holm over the subsets of one comparison; the answer paragraph is written from them.
   Deterministic references (untouched, random-init, bag of words, probe baselines) have one value per
   item, used for every seed: the seed level then resamples the arm's runs only.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata, spearmanr

from spatial_probing.analysis.features import bag_of_words
from spatial_probing.analysis.representation import (
    distinct_captions,
    odd_one_out_scores,
    odd_one_out_trials,
    rdm_upper,
    rsa_sample,
)
from spatial_probing.analysis.structure import triplet_rows
from spatial_probing.cli import main as cli_main
from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.structure import parse_caption
from spatial_probing.errors import SpatialProbingError
from spatial_probing.features.entry import load_entry
from spatial_probing.grounding.arms import CONFIGS
from spatial_probing.grounding.structure_scores import TESTS, triplet_scores, unit_rows
from spatial_probing.grounding.text import packaged_minilm
from spatial_probing.grounding.vsr_scenes import HELD_OUT_NOUNS, TRAIN_NOUNS
from spatial_probing.io import atomic_write
from spatial_probing.report.figures import ReportFigure
from spatial_probing.studies.command import run_study_command, study_parser
from spatial_probing.studies.grounding import (
    QUIET,
    TEST_TITLES,
    _cell,
    check_arms,
    comparison_pairs,
    convergence,
    extract,
    learning_curve_figure,
    score_panel,
    summarise,
    train_runs,
)
from spatial_probing.studies.report import write_report

TRANSFER_CONFIG = CONFIGS / "transfer" / "base.yaml"
#: the arms whose second tower reads VSR-vocabulary scenes (world_state / layout_grid read shape scenes only)
TRANSFER_ARMS = ("mlm", "text_pair", "text_pair_hn", "shuffled", "clip_onehot", "clip_onehot_hn", "contrastive",
                 "contrastive_hn")
#: arms trained with rendered images (the rest see captions only)
VISUAL_ARMS = ("shuffled", "clip_onehot", "clip_onehot_hn", "contrastive", "contrastive_hn")
UNTOUCHED, CONTROL, BOW = "untouched", "random-init", "bag of words"
REFERENCES = (UNTOUCHED, "mlm", "text_pair")
#: (VSR split directory, split) of the structure tests; the representation measures use random test
EVAL_SPLITS = (("random", "dev"), ("random", "test"), ("zeroshot", "test"))
GROUPS = ("seen", "held_out", "other")

#: display names of the models ``--model`` knows by a short name
MODEL_NAMES = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}


def model_dir(name: str) -> Path:
    """``minilm`` (the packaged all-MiniLM-L6-v2), ``mpnet`` (``install_sbert_mpnet.sh``'s default place) or a
    sentence-transformers directory."""
    if name == "minilm":
        return Path(packaged_minilm("--model minilm"))
    if name == "mpnet":
        path = Path.home() / ".cache" / "spatial_probing" / "models" / "all-mpnet-base-v2"
        if not path.is_dir():
            raise SpatialProbingError(f"--model mpnet: {path} is missing; run ../shared/models/install_sbert_mpnet.sh "
                                      f"{path} (or `make transfer`, which does)")
        return path
    path = Path(name)
    if not (path / "modules.json").is_file():
        raise SpatialProbingError(f"--model {name}: not minilm, mpnet or a sentence-transformers directory "
                                  "(no modules.json)")
    return path


# -- 1. evaluation sets ------------------------------------------------------------------------
def eval_sets(vsr: Path, out: Path, rows: int | None, seed: int) -> dict[str, Path]:
    """VSR split directory per name (``random``, ``zeroshot``): ``vsr`` itself, or a seeded subsample of
    ``rows`` rows of every split the study reads, written once under ``out/vsr_eval``."""
    names = sorted({d for d, _ in EVAL_SPLITS})
    for d, split in EVAL_SPLITS:
        if not (vsr / d / f"{split}.jsonl").is_file():
            raise SpatialProbingError(f"--vsr {vsr}: no {d}/{split}.jsonl (expected the VSR annotations' layout, "
                                      "e.g. ../shared/vsr)")
    if rows is None:
        return {d: vsr / d for d in names}
    for d, split in EVAL_SPLITS:
        target = out / "vsr_eval" / d / f"{split}.jsonl"
        if not target.is_file():
            lines = (vsr / d / f"{split}.jsonl").read_text().splitlines()
            keep = np.sort(np.random.default_rng(seed).permutation(len(lines))[:rows])
            atomic_write(target, "\n".join(lines[i] for i in keep) + "\n")
    return {d: out / "vsr_eval" / d for d in names}


# -- 2. item scores ----------------------------------------------------------------------------
def noun_group(caption: str, relation: str) -> str:
    """``held_out`` when a noun was held out of fine-tuning, ``seen`` when both nouns were trained on, else
    ``other`` (a noun the scenes never name, e.g. a plural or a non-COCO word)."""
    p = parse_caption(caption, relation)
    nouns = {p.subject, p.object}
    if nouns & set(HELD_OUT_NOUNS):
        return "held_out"
    return "seen" if nouns <= set(TRAIN_NOUNS) else "other"


def structure_items(x: np.ndarray, rows: SpatialRows, split: str) -> pd.DataFrame:
    """Per triplet of a ``derived:structure`` split and test: the score (1, 0.5 tie, 0; the grounding study's rule,
    ``structure_scores.triplet_scores``) under ``<split>/all`` and ``<split>/<noun group>``."""
    roles = triplet_rows(rows)
    x = np.asarray(x)
    scored = triplet_scores({"caption": x[roles["caption"]], "converse": x[roles["paraphrase"]],
                             "contradiction": x[roles["contradiction"]], "swap": x[roles["swap"]]})
    groups = np.array([noun_group(rows.captions[i], rows.relations[i]) for i in roles["caption"]])
    frames = []
    for test, value in scored.items():
        for group in ("all", *GROUPS):
            keep = np.flatnonzero(groups == group) if group != "all" else np.arange(len(value))
            frames.append(pd.DataFrame({"test": test, "subset": f"{split}/{group}", "item": keep,
                                        "value": value[keep]}))
    return pd.concat(frames, ignore_index=True)


def pooled(items: pd.DataFrame) -> pd.DataFrame:
    """``pooled/<group>``: the items of every split's noun group together (item ids made distinct per split)."""
    parts = []
    for k, (d, split) in enumerate(EVAL_SPLITS):
        for group in GROUPS:
            part = items[items.subset == f"{d} {split}/{group}"]
            parts.append(part.assign(subset=f"pooled/{group}", item=part.item + k * 1_000_000))
    return pd.concat(parts, ignore_index=True)


def retention_items(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per caption: Spearman correlation of its cosine similarities to every other caption under ``x`` and under
    ``reference`` (the untouched model)."""
    def ranks(z: np.ndarray) -> np.ndarray:
        u = unit_rows(z)  # random-init features are not unit
        sim = u @ u.T
        off = sim[~np.eye(len(sim), dtype=bool)].reshape(len(sim), -1)
        r = rankdata(off, axis=1)
        return (r - r.mean(1, keepdims=True)) / np.maximum(r.std(1, keepdims=True), 1e-12)
    return (ranks(x) * ranks(reference)).mean(1)


# -- 3. probes ---------------------------------------------------------------------------------
def fit_probes(entries: list[Path], out: Path, min_count: int) -> pd.DataFrame:
    """The relation-type probe with baselines and the subject control task through ``spatial-probing fit``."""
    task = {"class_path": "spatial_probing.tasks.relation_type.RelationType", "init_args": {"min_count": min_count}}
    args = ["fit", "--data.features", json.dumps([str(e) for e in entries]), "--data.task", json.dumps(task),
            "--data.folds", "stratified", "--data.baselines", '["majority", "ngrams", "ngrams-masked"]',
            "--data.control", "subject", "--model.class_weight", "balanced", "--model.Cs", "[0.1, 1.0, 10.0]",
            "--model.select_C", "true", "--trainer.logger", "false", "--out_dir", str(out / "probes"), *QUIET]
    if cli_main(args) != 0:
        raise SpatialProbingError("probing relation type failed; see the output above")
    return pd.read_csv(out / "probes" / "results.csv")


def probe_items(results: pd.DataFrame, labels: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Per-fold macro-F1 of the relation-type task and its control, per arm (baselines by their encoder name),
    averaged over relations (``measure``: the task)."""
    part = results[results.metric == "f1_macro"].copy()
    part["arm"] = [labels[e][0] if e in labels else enc for e, enc in zip(part.entry, part.encoder, strict=True)]
    part["seed"] = [labels[e][1] if e in labels else 0 for e in part.entry]
    mean = part.groupby(["arm", "seed", "task", "fold"], as_index=False)["value"].mean()
    return mean.rename(columns={"task": "measure", "fold": "item"})


# -- 4. statistics and the answer --------------------------------------------------------------
def replicate(frame: pd.DataFrame, seeds: list[int], deterministic: set[str]) -> pd.DataFrame:
    """Rows of deterministic references (one value per item) repeated for every seed, so they pair with arms."""
    fixed = frame[frame.arm.isin(deterministic)]
    return pd.concat([frame[~frame.arm.isin(deterministic)], *[fixed.assign(seed=s) for s in seeds]],
                     ignore_index=True)


def _row(comparisons: pd.DataFrame, a: str, b: str, key: str, value: str, test: str | None = None) -> pd.Series | None:
    rows = comparisons[(comparisons.arm_a == a) & (comparisons.arm_b == b) & (comparisons[key] == value)]
    if test is not None:
        rows = rows[rows.test == test]
    return rows.iloc[0] if len(rows) else None


def _estimate(stats: pd.DataFrame, arm: str, key: str, value: str, test: str | None = None) -> str:
    rows = stats[(stats.arm == arm) & (stats[key] == value)]
    if test is not None:
        rows = rows[rows.test == test]
    r = rows.iloc[0]
    return f"{r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def _below_chance(stats: pd.DataFrame, arms: list[str], subset: str, test: str) -> str:
    """Which arms' intervals lie wholly below chance (0.5), beside the random-init copy's score."""
    rows = stats[(stats.subset == subset) & (stats.test == test)].set_index("arm")
    below = [a for a in arms if rows.loc[a, "ci_high"] < 0.5]
    who = "every arm" if len(below) == len(arms) else ", ".join(below) or "no arm"
    return (f"Chance is 0.5 (where the bag of words ties); {who} stays below it (interval under 0.5); the "
            f"random-init copy scores {_estimate(stats, CONTROL, 'subset', subset, test)}.")


def answer(s_stats: pd.DataFrame, s_comp: pd.DataFrame, r_stats: pd.DataFrame, r_comp: pd.DataFrame,
           arms: list[str], model: str, level: float) -> list[str]:
    """The answer, from the paired comparisons only: per test and noun group, which arms move the score relative
    to the untouched model and to matched text-only fine-tuning; then what fine-tuning cost in retention."""
    out = []
    for test in TESTS:
        for group in ("held_out", "seen"):
            subset = f"pooled/{group}"
            vs = {ref: [(arm, r) for arm in arms if (r := _row(s_comp, ref, arm, "subset", subset, test)) is not None]
                  for ref in REFERENCES}
            up = [arm for arm, r in vs[UNTOUCHED] if r.significant and r["diff"] > 0]
            down = [arm for arm, r in vs[UNTOUCHED] if r.significant and r["diff"] < 0]
            visual = [(arm, r) for arm, r in vs["text_pair"] if arm in VISUAL_ARMS]
            over_text = [arm for arm, r in visual if r.significant and r["diff"] > 0]
            text = (f"**{TEST_TITLES[test]}, {group.replace('_', '-')} nouns** (pooled over VSR random dev, random "
                    f"test and zero-shot test): the untouched {model} scores "
                    f"{_estimate(s_stats, UNTOUCHED, 'subset', subset, test)}, the bag of words "
                    f"{_estimate(s_stats, BOW, 'subset', subset, test)}. Fine-tuning detectably raised it for "
                    f"{', '.join(up) or 'no arm'}" + (f" and lowered it for {', '.join(down)}" if down else "") +
                    f". {_below_chance(s_stats, arms, subset, test)}"
                    " Against the untouched model: " +
                    "; ".join(f"{arm} {_cell(r, level)}" for arm, r in vs[UNTOUCHED]) + ".")
            if visual:
                text += (" Visual arms against text-pair fine-tuning on the same captions (no pixels): " +
                         "; ".join(f"{arm} − text_pair {_cell(r, level)}" for arm, r in visual) +
                         f". {'Images beat matched text-only fine-tuning for ' + ', '.join(over_text) if over_text else 'No visual arm detectably beats matched text-only fine-tuning'}.")
            if vs["mlm"]:
                text += " Against masked-LM fine-tuning: " + "; ".join(
                    f"{arm} − mlm {_cell(r, level)}" for arm, r in vs["mlm"]) + "."
            out.append(text)
    kept = [(arm, r) for arm in arms if (r := _row(r_comp, UNTOUCHED, arm, "measure", "retention")) is not None]
    out.append("**Retention** (per caption, Spearman correlation of its similarities to the other VSR random-test "
               f"captions with the untouched model's; untouched = 1, bag of words "
               f"{_estimate(r_stats, BOW, 'measure', 'retention')}): " +
               "; ".join(f"{arm} {_estimate(r_stats, arm, 'measure', 'retention')}" for arm, _ in kept) + ".")
    return out


# -- 5. figure ---------------------------------------------------------------------------------
def transfer_figure(stats: pd.DataFrame, arms: list[str], level: float) -> ReportFigure:
    """Per test: every arm's pooled score on seen and on held-out nouns, with the references."""
    order = [UNTOUCHED, *arms, CONTROL, BOW]
    fig = Figure(figsize=(10, 0.4 * len(order) + 1.6))
    axes = fig.subplots(1, len(TESTS), sharey=True)
    y = np.arange(len(order))[::-1]
    for ax, test in zip(axes, TESTS, strict=True):
        for shift, group, colour in ((0.15, "seen", "#3b6fb6"), (-0.15, "held_out", "#d0583a")):
            t = stats[(stats.test == test) & (stats.subset == f"pooled/{group}")].set_index("arm").loc[order]
            ax.errorbar(t.estimate, y + shift, xerr=[t.estimate - t.ci_low, t.ci_high - t.estimate], fmt="o",
                        color=colour, capsize=3, label=f"{group.replace('_', '-')} nouns")
        score_panel(ax, test, order, "score on VSR triplets (pooled splits)")
    fig.tight_layout()
    return ReportFigure("transfer", "Structure and swap scores on real VSR captions",
                        f"Item means over seeds and triplets of VSR random dev, random test and zero-shot test, "
                        f"{level:.0%} two-level bootstrap intervals; blue: both nouns seen in fine-tuning, red: a "
                        "held-out noun. Chance 0.5.", fig)


# -- 6. the study ------------------------------------------------------------------------------
def _encoders(runs: pd.DataFrame, model: Path) -> dict[tuple[str, int], str]:
    names = {(r.arm, r.seed): f"sbert:{r.sbert}" for r in runs.itertuples()}
    return names | {(UNTOUCHED, 0): f"sbert:{model}", (CONTROL, 0): f"sbert:{model}+random-init"}


def run_study(model_name: str, arms: list[str], seeds: list[int], out: Path, steps: int, extra: list[str],
              vsr: Path, eval_rows: int | None, n_boot: int, level: float, demo: bool = False) -> Path:
    """Every step of the study; returns the report path."""
    check_arms(arms, seeds)
    if wrong := [a for a in arms if a not in TRANSFER_ARMS]:
        raise SpatialProbingError(f"--arms {wrong}: not a transfer arm (their towers read shape scenes only); "
                                  f"transfer arms: {', '.join(TRANSFER_ARMS)}")
    if out.exists() and not out.is_dir():
        raise SpatialProbingError(f"--out_dir {out} is a file, not a directory")
    model = model_dir(model_name).resolve()
    label = MODEL_NAMES.get(model_name, model.name)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    splits = eval_sets(vsr, out, eval_rows, seed=0)  # checked before hours of training
    runs, curves = train_runs(arms, seeds, out, steps, ["--model.text.init_args.model", str(model), *extra],
                              n_probe=400, probe_seed=12345, configs=(TRANSFER_CONFIG,))
    trained = time.perf_counter() - started
    feature_root = out / "features"
    encoders = _encoders(runs, model)
    structure, representation = [], []
    for d, split in EVAL_SPLITS:
        for key, name in encoders.items():
            entry = load_entry(extract(name, f"derived:structure:{splits[d]}", feature_root, split))
            structure.append(structure_items(np.asarray(entry.features), entry.rows, f"{d} {split}").assign(
                arm=key[0], seed=key[1]))
        structure.append(structure_items(bag_of_words(entry.rows).x, entry.rows, f"{d} {split}").assign(arm=BOW, seed=0))
    test_entries = {key: extract(name, str(splits["random"]), feature_root, "test") for key, name in encoders.items()}
    loaded = {key: load_entry(p) for key, p in test_entries.items()}
    rows = loaded[(UNTOUCHED, 0)].rows
    captions = distinct_captions(rows)
    trials = odd_one_out_trials(rows, 5000, 42)
    sample = rsa_sample(rows, 7, 42)
    sources = {key: np.asarray(entry.features) for key, entry in loaded.items()}
    sources[(BOW, 0)] = bag_of_words(rows).x
    reference = sources[(UNTOUCHED, 0)]
    rsa = []
    for (arm, seed), x in sources.items():
        representation += [
            pd.DataFrame({"measure": "retention", "item": np.arange(len(captions)),
                          "value": retention_items(x[captions], reference[captions])}).assign(arm=arm, seed=seed),
            pd.DataFrame({"measure": "odd_one_out", "item": np.arange(len(trials)),
                          "value": odd_one_out_scores(unit_rows(x), trials)}).assign(arm=arm, seed=seed)]
        rsa.append({"arm": arm, "seed": seed, "rsa_vs_untouched": float(spearmanr(
            rdm_upper(unit_rows(x[sample])), rdm_upper(unit_rows(reference[sample]))).statistic)})
    labels = {p.name: key for key, p in test_entries.items()}
    probes = probe_items(fit_probes(list(test_entries.values()), out, min_count=10 if eval_rows else 50), labels)

    fixed = {UNTOUCHED, CONTROL, BOW, *probes.arm.unique()} - set(arms)
    items = replicate(pd.concat(structure, ignore_index=True), seeds, fixed)
    items = pd.concat([items, pooled(items)], ignore_index=True)
    measures = replicate(pd.concat([*representation, probes], ignore_index=True), seeds, fixed)
    everyone = [UNTOUCHED, *arms, CONTROL, BOW]
    pairs = comparison_pairs([UNTOUCHED, *arms], REFERENCES)
    s_stats, s_comp = summarise(items, everyone, pairs, ["test", "subset"], "item", n_boot, level)
    # the probe baselines join the measures' arms, after the encoders (summarise skips an arm a measure lacks)
    measured = [*everyone[:-1], *sorted(set(probes.arm) - set(everyone)), BOW]
    r_stats, r_comp = summarise(measures, measured, pairs, ["measure"], "item", n_boot, level)
    rsa = pd.DataFrame(rsa).groupby("arm", sort=False)["rsa_vs_untouched"].agg(["mean", "min", "max"]).reset_index()
    throughput = runs.groupby("arm", sort=False)["samples_per_s"].agg(["mean", "min", "max"]).reset_index()
    tables = out / "tables"
    for name, frame in {"runs": runs, "learning_curves": curves, "structure_stats": s_stats,
                        "structure_comparisons": s_comp, "measure_stats": r_stats, "measure_comparisons": r_comp,
                        "rsa": rsa, "throughput": throughput}.items():
        atomic_write(tables / f"{name}.csv", frame.to_csv(index=False))

    wall = time.perf_counter() - started
    scale = (f"**This is the demo** ({len(arms)} arms, {len(seeds)} seeds, {steps} steps"
             f"{f', {eval_rows} rows per VSR split' if eval_rows else ''}): a small run to show the pipeline; quote "
             "only `make transfer`." if demo else f"{len(arms)} arms, {len(seeds)} seeds, {steps} steps each.")
    held = s_stats[s_stats.subset.str.startswith("pooled/")]
    blocks: list[tuple[str, object]] = [
        ("h1", f"Does grounded fine-tuning teach {label} spatial structure that shows on real VSR captions?"),
        ("p", scale),
        ("figure", transfer_figure(s_stats, arms, level)),
        ("h2", "Answer"),
        *[("p", line) for line in answer(s_stats, s_comp, r_stats, r_comp, arms, label, level)],
        *([("p", f"Caution: only {len(seeds)} seeds per arm; intervals understate run-to-run variation.")]
          if len(seeds) < 3 else []),
        ("p", f"Set-up: fine-tuned from {model} under configs/grounding/transfer/base.yaml (arms differ in their "
              f"objective and second tower only, docs/grounding.md); held-out nouns {list(HELD_OUT_NOUNS)}; "
              f"{level:.0%} two-level bootstrap over seeds and items ({n_boot} resamples); paired comparisons, Holm "
              f"over the subsets of one comparison and test. Training {trained:.0f} s, the whole study {wall:.0f} s "
              "(reused runs cost nothing)."),
        ("figure", learning_curve_figure(curves, arms)),
        ("p", convergence(curves)),
        ("h2", "Fine-tuning throughput (samples/s per arm, this machine)"),
        ("table", throughput),
        ("h2", "Structure tests on VSR (pooled splits)"),
        ("table", held),
        ("h2", "Retention, odd-one-out and the relation-type probe (VSR random test)"),
        ("table", r_stats),
        ("h2", "RSA against the untouched model (balanced sample, 7 captions per relation)"),
        ("table", rsa),
        ("h2", "Structure tests per split and noun group"),
        ("table", s_stats[~s_stats.subset.str.startswith("pooled/")]),
        ("h2", "Paired comparisons (diff = arm_b − arm_a)"),
        ("table", s_comp),
        ("table", r_comp),
    ]
    report = write_report(out, "Transfer study", blocks)
    print(f"[transfer] fine-tuning throughput (samples/s):\n{throughput.to_string(index=False)}", flush=True)
    print(f"[transfer] wall time {wall:.0f} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is a local directory
    parser = study_parser(__spec__.name, __doc__, list(TRANSFER_ARMS), [0, 1, 2], 1000, "outputs/transfer/minilm")
    parser.add_argument("--model", default="minilm", help="minilm, mpnet or a sentence-transformers directory")
    parser.add_argument("--vsr", default="../shared/vsr", help="VSR annotations: random/ and zeroshot/ split files")
    parser.add_argument("--eval_rows", type=int, default=None, help="evaluate on a seeded subsample of each split")
    return run_study_command(parser, argv, lambda a: run_study(
        a.model, a.arms, a.seeds, Path(a.out_dir), a.steps, shlex.split(a.train_args), Path(a.vsr), a.eval_rows,
        a.n_boot, a.level, a.demo))


if __name__ == "__main__":
    sys.exit(main())
