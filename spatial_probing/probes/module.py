"""Cross-validated linear probes on cached features, as a LightningModule (`probes.data` serves the batches).

``LinearProbe`` fits every (fold, C, target) probe of an entry in one ``training_step`` (manual
optimisation: the step *is* the solver), keeps the weights as buffers ``W_<i>`` [F, len(Cs), T, d]
and ``b_<i>``, and in ``validation_step`` scores the held-out rows, logs ``fold{k}/val/f1_macro/<target>``,
``fold{k}/val/<metric>_mean`` and ``summary/<metric>_{mean,std}``, and appends rows to the tidy results
table (every metric of every fold and target). It stays one file:
the solve, the held-out scoring, the kept outputs for the statistics and the result rows are the
steps of one LightningModule and share its state (fits, records, outputs).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from spatial_probing.errors import ConfigError
from spatial_probing.probes import baselines, metrics, selection, sklearn_ref, solver
from spatial_probing.probes.data import check_option
from spatial_probing.probes.mdl import Codelength, MDLOptions, online_codelength
from spatial_probing.probes.results import (
    HEADLINE_METRIC,
    IDENTITY_COLUMNS,
    RESULT_COLUMNS,
    results_frame,
    summary,
)
from spatial_probing.probes.solver.basis import BasisCache
from spatial_probing.probes.solver.predict import decision_values, sparse_rows
from spatial_probing.probes.stats import (
    SetOutputs,
    StatsOptions,
    codelength_table,
    comparisons_table,
    stats_table,
)

Solver = Literal["batched", "sklearn"]
_SOLVERS = {"batched": solver.fit_logreg, "sklearn": sklearn_ref.fit_sklearn}
# `fit_logreg`'s HVP precision by config name ("auto" it resolves itself, per probe set)
HVP_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}
# A probe has no torch optimizer by design (the solvers optimise); Lightning's hint about it is noise.
warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")


def _resolved(fit_fn: Any, name: str, value: Any) -> Any:
    """The value a solver runs with: the configured one, else the solver's own default."""
    return value if value is not None else inspect.signature(fit_fn).parameters[name].default


class LinearProbe(pl.LightningModule):
    """Every (fold, C, target) L2 logistic-regression probe of each entry, fitted full-batch.

    Args:
        Cs: inverse regularisation strengths (scikit-learn's C); all are fitted at once.
        class_weight: None or ``balanced`` (scikit-learn's weighting, per training fold).
        solver: ``batched`` (all problems in one tensor, converged) or ``sklearn`` (the reference
            loop; with its default tolerance it reproduces the original study's numbers).
        tol: solver tolerance (max abs scaled gradient); None: the solver's default.
        max_iter: solver iteration limit; None: the solver's default.
        select_C: choose C per (fold, target) by inner stratified cross-validation on the training
            rows (``data.n_splits`` inner folds, mean macro-F1) and report only the chosen C;
            needs the batched solver (all inner fits are one batched solve).
        dtype: precision of the batched solver's Hessian-vector products (``bfloat16`` only where the
            hardware multiplies it natively, float32 elsewhere; ``auto``: bfloat16 there for probe sets
            whose basis is large enough to gain from it, float32 for the rest); gradients and the
            stopping test stay float64-accurate (docs/solver.md).
        stats: bootstrap CIs, meta-category aggregates, selectivity and paired tests (`probes.stats`),
            from the held-out predictions of this fit; needs one C per probe (a single C or select_C).
        mdl: also the online codelength of every target (`probes.mdl`), a batched solve of its own.
    """

    def __init__(
        self,
        Cs: list[float] | None = None,
        class_weight: Literal["balanced"] | None = None,
        solver: Solver = "batched",
        tol: float | None = None,
        max_iter: int | None = None,
        select_C: bool = False,
        dtype: Literal["float64", "float32", "bfloat16", "auto"] = "float64",
        stats: StatsOptions | None = None,
        mdl: MDLOptions | None = None,
    ) -> None:
        super().__init__()
        if select_C and solver != "batched":
            raise ConfigError("model.select_C needs model.solver=batched (the nested CV is one batched solve)")
        check_option("model.Cs", Cs, Cs is None or (len(Cs) > 0 and all(np.isfinite(c) and c > 0 for c in Cs)),
                      "a non-empty list of finite numbers > 0 (inverse regularisation strengths), or null for [1.0]")
        check_option("model.tol", tol, tol is None or (np.isfinite(tol) and tol > 0), "a number > 0, or null")
        check_option("model.max_iter", max_iter, max_iter is None or max_iter >= 1, "an integer >= 1, or null")
        if stats is not None and len(Cs or [1.0]) > 1 and not select_C:
            raise ConfigError("model.stats needs one C per probe: set model.select_C: true or a single model.Cs value")
        self.save_hyperparameters()
        self.Cs = tuple(float(c) for c in (Cs or [1.0]))
        # a config may hand the option groups over as mappings
        self.stats = StatsOptions(**stats) if isinstance(stats, dict) else stats
        self.mdl = MDLOptions(**mdl) if isinstance(mdl, dict) else mdl
        self.automatic_optimization = False  # training_step runs the solver itself
        self._fits: dict[int, solver.LogRegFit] = {}
        self._chosen: dict[int, torch.Tensor] = {}  # per set: index into Cs per (fold, target)
        self._scores: dict[int, dict[str, torch.Tensor]] = {}  # per set: held-out metrics select_C already took
        # feature bases shared by the fits of one feature matrix (selection, control task, MDL)
        self._bases = BasisCache()
        self.records: list[pd.DataFrame] = []  # tidy results, one frame per probe set
        self.fit_info: list[dict] = []  # one row per probe set: provenance, solver, convergence
        self.outputs: list[SetOutputs] = []  # held-out predictions per probe set (model.stats)
        self.codelengths: list[tuple[dict, np.ndarray, Codelength]] = []  # (info, y, code) per set (model.mdl)

    @property
    def fit_fn(self) -> Any:
        return _SOLVERS[self.hparams.solver]

    def configure_optimizers(self) -> None:
        return None  # the solvers optimise; Lightning has nothing to step

    def _solver_kwargs(self, device: torch.device) -> dict[str, Any]:
        hp = self.hparams
        kwargs = {"class_weight": hp.class_weight}
        kwargs |= {k: v for k, v in (("tol", hp.tol), ("max_iter", hp.max_iter)) if v is not None}
        if hp.solver == "batched":
            kwargs |= {"device": device, "dtype": HVP_DTYPES[hp.dtype], "bases": self._bases}
        return kwargs

    def _solve(self, batch: dict[str, Any]) -> solver.LogRegFit:
        """Fit every (fold, C, target) problem; with ``select_C`` also pick C per (fold, target)."""
        x, y, train_mask = batch["x"], batch["y"], batch["train_mask"]
        if baselines.is_majority(batch["info"]["encoder"]):  # no features: the training fold's prior
            fit = baselines.majority_fit(y.cpu(), train_mask.cpu(), self.Cs)
            if self.hparams.select_C:
                self._chosen[batch["index"]] = torch.zeros(fit.b.shape[0], fit.b.shape[2], dtype=torch.int64)
            return fit
        kwargs = self._solver_kwargs(x.device)
        if self.hparams.select_C:
            protocol = batch["protocol"]
            chosen = selection.select_C(
                x, y.cpu(), train_mask.cpu(), batch["test_mask"].cpu(), self.Cs,
                inner_splits=protocol["n_splits"], seed=protocol["seed"], **kwargs,
            )  # fmt: skip
            self._chosen[batch["index"]] = chosen.best_index
            self._scores[batch["index"]] = chosen.outer
            return chosen.refit
        if self.hparams.solver == "sklearn":  # the scikit-learn loop runs on the CPU whatever the accelerator
            x, y, train_mask = x.cpu(), y.cpu(), train_mask.cpu()
            # one problem at a time takes minutes on real data: show it when the trainer shows progress
            kwargs["progress"] = self._trainer is not None and self.trainer.progress_bar_callback is not None
        return self.fit_fn(x, y, train_mask, self.Cs, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        index = batch["index"]
        fit = self._solve(batch)
        # registered so the weights are part of state_dict (checkpoints keep every probe)
        self.register_buffer(f"W_{index}", fit.W.to(self.device))
        self.register_buffer(f"b_{index}", fit.b.to(self.device))
        self._fits[index] = fit
        hp = self.hparams
        self.fit_info.append({
            **{k: v for k, v in batch["info"].items() if k != "targets"},
            "solver": fit.solver,
            "tol": _resolved(self.fit_fn, "tol", hp.tol),
            "max_iter": _resolved(self.fit_fn, "max_iter", hp.max_iter),
            "class_weight": hp.class_weight or "none",
            "n_problems": int(fit.converged.numel()),
            "n_converged": int(fit.converged.sum()),
            "n_stopped_at_cap": int(fit.stopped_at_cap.sum()),  # ran into max_iter (sklearn: n_iter_ >= max_iter)
            "max_grad": fit.max_grad,
            "sklearn_version": sklearn_ref.sklearn_version(),  # folds, and the reference solver
        })
        self._warn_unconverged(self.fit_info[-1])

    def _warn_unconverged(self, info: dict[str, Any]) -> None:
        """Announce probes stopped by the iteration cap: console now, fits.csv and report.html (``warning``)."""
        unconverged = info["n_problems"] - info["n_converged"]
        info["warning"] = "" if not unconverged else (
            f"{unconverged} of {info['n_problems']} probe problems of {info['encoder']} stopped at "
            f"max_iter={info['max_iter']} before reaching tol={info['tol']:g} (worst gradient {info['max_grad']:.3g}); "
            "raise --model.max_iter, or keep --data.normalize true for unscaled features"
        )  # fmt: skip
        if unconverged:
            print(f"warning: {info['warning']}", flush=True)
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        index = batch["index"]
        if index not in self._fits:  # sanity-check pass before training: nothing to evaluate
            return
        fit = self._fits[index]
        scores = self._scores.pop(index, None)  # the nested selection scored the outer test rows already
        if scores is None:
            scores = metrics.fit_metrics(batch["x"], batch["y"], batch["test_mask"], fit)  # each [F, C, T]
        scores = {name: value.cpu() for name, value in scores.items()}
        C = torch.tensor(self.Cs, dtype=torch.float64).reshape(1, -1, 1).expand_as(scores["f1_macro"])
        if index in self._chosen:
            pick = self._chosen[index].cpu()[:, None, :]  # [F, 1, T]
            scores = {k: v.gather(1, pick) for k, v in scores.items()}
            C = C.gather(1, pick)
        frame = self._records(batch, scores, C, fit.solver)
        self.records.append(frame)
        prefix = batch["log_label"].replace("/", "_") + "/" if batch["n_sets"] > 1 else ""
        self.log_dict(self._metric_dict(frame, prefix), on_step=False, on_epoch=True, batch_size=1)
        self._keep_outputs(batch, fit)

    def _keep_outputs(self, batch: dict[str, Any], fit: solver.LogRegFit) -> None:
        """What ``stats`` and ``mdl`` need of this probe set: held-out decisions, codelengths."""
        hp = self.hparams
        y = batch["y"].cpu().numpy().astype(bool)
        test = batch["test_mask"].cpu().numpy()
        if self.stats is not None:
            self.outputs.append(SetOutputs(
                info=batch["info"], label=batch["label"], rows=_numpy(batch["rows"]), groups=_numpy(batch["groups"]),
                y=y, test=test, decision=self._held_out_decision(batch, fit),
            ))  # fmt: skip
        if self.mdl is not None and not baselines.is_majority(batch["info"]["encoder"]):
            rows = (batch["train_mask"] | batch["test_mask"]).any(0).cpu().numpy()
            kwargs = {k: v for k, v in self._solver_kwargs(batch["x"].device).items() if k != "class_weight"}
            if hp.solver != "batched":  # MDL's blocks are one batched solve whichever solver fitted the probes
                kwargs = {"tol": kwargs.get("tol", 1e-10), "bases": self._bases}
            try:
                code = online_codelength(batch["x"], batch["y"].cpu(), rows, self.mdl, **kwargs)
            except (torch.linalg.LinAlgError, ValueError) as exc:  # the scores and stats are still written
                warnings.warn(f"MDL of {batch['log_label']} skipped: the block probes failed ({exc})", stacklevel=1)
                return
            self.codelengths.append((batch["info"], y & rows, code))

    def _held_out_decision(self, batch: dict[str, Any], fit: solver.LogRegFit) -> np.ndarray:
        """``[n, T]`` decision value of each row from the fold where it is a test row, at the reported C."""
        test = batch["test_mask"].cpu()
        F, _, T = test.shape
        chosen = self._chosen.get(batch["index"])
        pick = chosen.cpu() if chosen is not None else torch.zeros(F, T, dtype=torch.int64)  # C index per problem
        folds, targets = torch.meshgrid(torch.arange(F), torch.arange(T), indexing="ij")
        # the reported probes only ([F, T, d]), all folds in one product: X is converted to float64 once
        W, b = fit.W[folds, pick, targets], fit.b[folds, pick, targets]
        dec = decision_values(sparse_rows(batch["x"]), W.reshape(F * T, -1), b.reshape(-1)).cpu().reshape(-1, F, T)
        out = torch.full(test.shape[1:], float("nan"), dtype=torch.float64)
        for f in range(F):
            out = torch.where(test[f], dec[:, f], out)
        return out.numpy()

    def credibility(self) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """stats.csv and comparisons.csv tables (docs/credibility.md schema), or None without stats/mdl."""
        if self.stats is None and self.mdl is None:
            return None
        options = self.stats or StatsOptions()
        frames = [stats_table(self.outputs, options)]  # no outputs kept without stats: an empty table
        frames += [codelength_table(info, y, code, self.mdl, options) for info, y, code in self.codelengths]
        return pd.concat(frames, ignore_index=True), comparisons_table(self.outputs, options)

    def _records(
        self, batch: dict[str, Any], scores: dict[str, torch.Tensor], C: torch.Tensor, solver_name: str
    ) -> pd.DataFrame:
        info = batch["info"]
        n_folds, n_c, n_targets = C.shape
        n_train = batch["train_mask"].sum(dim=1).cpu().numpy()  # [F, T]
        n_test = batch["test_mask"].sum(dim=1).cpu().numpy()
        fold, _, target = (a.ravel() for a in np.indices((n_folds, n_c, n_targets)))
        base = pd.DataFrame({
            "fold": fold, "C": C.cpu().numpy().ravel(), "target": np.asarray(info["targets"], dtype=object)[target],
            "n_train": n_train[fold, target], "n_test": n_test[fold, target],
        })  # fmt: skip
        frames = [base.assign(metric=name, value=v.double().cpu().numpy().ravel()) for name, v in scores.items()]
        identity = {k: info[k] for k in IDENTITY_COLUMNS}
        frame = pd.concat(frames, ignore_index=True).assign(**identity, solver=solver_name)
        return frame[list(RESULT_COLUMNS)]

    def _metric_dict(self, frame: pd.DataFrame, prefix: str) -> dict[str, float]:
        """``<prefix>[C=<c>/]fold{k}/val/<HEADLINE_METRIC>/<target>``, fold means of every metric,
        ``summary/<metric>_{mean,std}``.

        ``prefix`` names the entry when one run probes several ("/" in encoder names replaced, since
        W&B opens a panel section per "/"); the C level appears only for an unselected C grid, so a
        single-encoder, single-C run has the plain names. Per (fold, target) only the headline metric:
        Lightning keeps a state object per logged name (~0.6 ms each, 3,740 names for every metric of a
        credibility fit of one encoder), and results.csv holds every value.
        """
        grid = len(self.Cs) > 1 and not self.hparams.select_C
        out: dict[str, float] = {}
        for c, at_c in frame.groupby("C") if grid else [(None, frame)]:
            p = prefix + (f"C={c:g}/" if grid else "")
            for row in at_c[at_c["metric"] == HEADLINE_METRIC].itertuples():
                out[f"{p}fold{row.fold}/val/{row.metric}/{row.target}"] = row.value
            for (metric, fold), value in at_c.groupby(["metric", "fold"])["value"].mean().items():
                out[f"{p}fold{fold}/val/{metric}_mean"] = value
            for row in summary(at_c).itertuples():
                out[f"{p}summary/{row.metric}_mean"] = row.mean
                out[f"{p}summary/{row.metric}_std"] = row.std
        return out

    def results(self) -> pd.DataFrame:
        """Every number of the fit as one tidy table (``probes.results.RESULT_COLUMNS``)."""
        return results_frame(self.records)


def _numpy(a: Any) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
