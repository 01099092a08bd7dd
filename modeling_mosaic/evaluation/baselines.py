"""Single-task baselines: the estimators a user would otherwise train for one question.

Each task predicts one scalar from the inputs of one figure-2 condition, with the condition's own inputs
as features (transformed by the registry into the space MOSAIC learns in: asinh magnitudes as they are,
an SFH as log10(SFR + 1e-3) on its given elements). Three estimators per task: a k-nearest-neighbours
regressor on standardised features (k picked on a validation split), a histogram gradient-boosting
regressor, and a dense network trained for the task alone (`DenseNetwork`). All are trained on (a
subsample of) the train split and scored on the test rows with the same metric functions as MOSAIC. Also
here: the SFH-convention ablation of the late-vs-early stellar-mass gain.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..modalities import MODALITIES, get_modality
from .conditions import SFH_LATE, Condition, get_condition
from .metrics.functions import gain, regression_metrics

#: Candidate k of the nearest-neighbours baseline (those larger than the fitting fold are dropped).
KNN_K_GRID = (5, 10, 20, 40)
#: Default cap on the baselines' training rows: none, so they learn from the same train split as MOSAIC. A cap
#: is unfair to k-NN on a noise-free catalog: measured at paper scale (5,000 held-out rows), k-NN's redshift
#: MAE from LSST+SPHEREx is 0.0189 with 20,000 training galaxies and 0.0067 with all 180,247.
MAX_TRAIN = None
#: Default number of threads of the estimators. One: these fits are small, and OpenMP threads on a busy
#: machine (or beside torch's) slow gradient boosting down by an order of magnitude.
THREADS = 1


@dataclass(frozen=True)
class BaselineTask:
    """Predict `target` from the inputs of the figure-2 condition `condition`."""

    target: str
    condition: str

    @property
    def name(self) -> str:
        return f"{self.target} from {self.condition}"


TASKS: tuple[BaselineTask, ...] = (
    BaselineTask("redshift", "lsst"),
    BaselineTask("redshift", "lsst+spherex"),
    BaselineTask("log_stellar_mass", "lsst"),
    BaselineTask("log_stellar_mass", "lsst+sfh_late"),
    BaselineTask("log_stellar_mass", "lsst+sfh_early"),
)

#: The baselines' analogues of the headline gains: name -> (task with the extra input, task without).
GAIN_TASKS = {
    "redshift_gain_spherex": ("redshift from lsst+spherex", "redshift from lsst"),
    "stellar_mass_gain_late_vs_early_sfh": (
        "log_stellar_mass from lsst+sfh_late", "log_stellar_mass from lsst+sfh_early"
    ),
}


def condition_features(condition: Condition, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Features (galaxies, F) of a condition: the given elements of each given modality in the registry's
    learning space. NaN stays NaN (missing)."""
    parts = []
    for name, values in condition.inputs(columns).items():
        mask = condition.partial.get(name)
        values = values if mask is None else values[:, np.asarray(mask, dtype=bool)]
        values = values.reshape(len(values), -1)
        parts.append(get_modality(name).to_learning(values))
    return np.concatenate(parts, axis=1)


def make_estimators(seed: int = 0, threads: int | None = THREADS) -> dict:
    """The baseline estimators, unfitted: name -> regressor with scikit-learn's fit/predict."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return {"knn": ValidatedKNN(seed=seed), "hgb": HistGradientBoostingRegressor(random_state=seed),
            "mlp": DenseNetwork(seed=seed, threads=threads)}


class ValidatedKNN:
    """k-nearest neighbours on median-imputed, standardised features, k chosen by the MAE on a 20%
    validation split of the training rows, then refitted on all of them."""

    def __init__(self, k_grid=KNN_K_GRID, seed: int = 0):
        self.k_grid = tuple(k_grid)
        self.seed = seed

    def fit(self, X, y):
        from sklearn.model_selection import GridSearchCV, ShuffleSplit

        fold = int(0.8 * len(X))
        grid = [k for k in self.k_grid if k <= fold] or [max(1, fold)]
        search = GridSearchCV(
            self._pipeline(),
            {"kneighborsregressor__n_neighbors": grid},
            cv=ShuffleSplit(n_splits=1, test_size=0.2, random_state=self.seed),
            scoring="neg_mean_absolute_error",
        )
        search.fit(X, y)
        self.k_ = int(search.best_params_["kneighborsregressor__n_neighbors"])
        self.model_ = search.best_estimator_
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def params(self) -> dict:
        return {"k": self.k_}

    @staticmethod
    def _pipeline():
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.pipeline import make_pipeline

        return make_pipeline(*standardised_features(), KNeighborsRegressor())


def standardised_features() -> list:
    """Median imputation of missing features, then standardisation: the first steps of k-NN and the dense
    network, unfitted."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    return [SimpleImputer(strategy="median"), StandardScaler()]


class DenseNetwork:
    """The single-task network a photo-z user would train: median-imputed, standardised features -> three GELU
    layers of `width` -> the standardised target, with an L1 loss (its optimum is the median, what MAE scores),
    AdamW on a one-cycle schedule, keeping the epoch with the lowest MAE on a 10% validation split."""

    def __init__(self, width: int = 256, epochs: int = 40, batch_size: int = 256, learning_rate: float = 2e-3,
                 seed: int = 0, threads: int | None = THREADS):
        self.width, self.epochs, self.batch_size = width, epochs, batch_size
        self.learning_rate, self.seed, self.threads = learning_rate, seed, threads

    def fit(self, X, y):
        import torch
        from sklearn.pipeline import make_pipeline

        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.features_ = make_pipeline(*standardised_features()).fit(X)
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std()) + 1e-12
        order = np.random.default_rng(self.seed).permutation(len(X))
        n_val = max(1, len(X) // 10) if len(X) >= 10 else 0
        val, fit = order[:n_val], order[n_val:]
        features = torch.tensor(self.features_.transform(X), dtype=torch.float32)
        target = torch.tensor((y - self.y_mean_) / self.y_std_, dtype=torch.float32)
        with _torch_threads(self.threads):
            torch.manual_seed(self.seed)
            self.network_ = net = self._network(X.shape[1])
            steps = self.epochs * -(-len(fit) // self.batch_size)
            optimizer = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.learning_rate, total_steps=steps)
            generator = torch.Generator().manual_seed(self.seed)
            best, self.best_epoch_ = np.inf, self.epochs
            for epoch in range(1, self.epochs + 1):
                net.train()
                for batch in torch.tensor(fit)[torch.randperm(len(fit), generator=generator)].split(self.batch_size):
                    loss = (net(features[batch]).squeeze(-1) - target[batch]).abs().mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                if n_val:
                    net.eval()
                    with torch.no_grad():
                        mae = float((net(features[val]).squeeze(-1) - target[val]).abs().mean())
                    if mae < best:
                        best, self.best_epoch_ = mae, epoch
                        state = {k: v.clone() for k, v in net.state_dict().items()}
            if n_val:
                net.load_state_dict(state)
        return self

    def predict(self, X):
        import torch

        features = torch.tensor(self.features_.transform(np.asarray(X, dtype=np.float64)), dtype=torch.float32)
        self.network_.eval()
        with _torch_threads(self.threads), torch.no_grad():
            out = torch.cat([self.network_(chunk).squeeze(-1) for chunk in features.split(65536)])
        return out.double().numpy() * self.y_std_ + self.y_mean_

    def params(self) -> dict:
        return {"width": self.width, "epochs": self.epochs, "best_epoch": self.best_epoch_}

    def _network(self, features: int):
        from torch import nn

        w = self.width
        return nn.Sequential(nn.Linear(features, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, w),
                             nn.GELU(), nn.Linear(w, 1))


class _torch_threads:
    """Run with torch limited to `threads` intra-op threads (None: unchanged), restored afterwards."""

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


def subsample_rows(n: int, max_rows: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `max_rows` of `n` rows, drawn without replacement with `seed`."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def _fit_and_score(estimator, X_train, y_train, X_test, y_test) -> dict:
    start = time.perf_counter()
    estimator.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    prediction = estimator.predict(X_test)
    predict_s = time.perf_counter() - start
    result = regression_metrics(prediction, y_test)
    result.update(fit_s=round(fit_s, 3), predict_s=round(predict_s, 3))
    if hasattr(estimator, "params"):
        result["params"] = estimator.params()
    return result


def _training_rows(train: Mapping[str, np.ndarray], target: str, max_train: int | None, seed: int) -> np.ndarray:
    """Rows of the train split with a finite target, subsampled to at most `max_train`."""
    finite = np.flatnonzero(np.isfinite(np.asarray(train[target], dtype=np.float64)))
    return finite[subsample_rows(len(finite), max_train, seed)]


def run_baselines(
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    tasks=TASKS,
    *,
    seed: int = 0,
    max_train: int | None = MAX_TRAIN,
    threads: int | None = THREADS,
) -> dict:
    """Fit and score every estimator on every task. Returns {"tasks": {task name: {target, condition,
    n_train, n_train_available, estimators: {name: metrics + fit_s + predict_s}}}, "gains": {estimator:
    {gain name: value}}, "max_train": cap, "threads": threads}."""
    from threadpoolctl import threadpool_limits

    results = {}
    for task in tasks:
        condition = get_condition(task.condition)
        rows = _training_rows(train, task.target, max_train, seed)
        X_train = condition_features(condition, {k: np.asarray(v)[rows] for k, v in train.items()})
        y_train = np.asarray(train[task.target], dtype=np.float64)[rows]
        X_test = condition_features(condition, test)
        y_test = np.asarray(test[task.target], dtype=np.float64)
        with threadpool_limits(threads):
            scores = {
                name: _fit_and_score(estimator, X_train, y_train, X_test, y_test)
                for name, estimator in make_estimators(seed, threads).items()
            }
        results[task.name] = {
            "target": task.target,
            "condition": task.condition,
            "n_train": int(len(rows)),
            "n_train_available": int(np.isfinite(np.asarray(train[task.target], dtype=np.float64)).sum()),
            "estimators": scores,
        }
    return {"tasks": results, "gains": baseline_gains(results), "max_train": max_train, "threads": threads}


def baseline_gains(task_results: Mapping[str, dict]) -> dict:
    """Per estimator, the headline gains computed from the baseline MAEs (None where a task is missing)."""
    estimators = sorted({e for r in task_results.values() for e in r["estimators"]})

    def mae(task: str, estimator: str):
        return task_results.get(task, {}).get("estimators", {}).get(estimator, {}).get("mae")

    return {
        e: {g: gain(mae(with_, e), mae(without, e)) for g, (with_, without) in GAIN_TASKS.items()}
        for e in estimators
    }


# ------------------------------------------------------------------------------ SFH-convention ablation
#: Width of each SFH bin in years on the registry grid (the first bin starts at the Big Bang).
_SFH_DT_YR = np.diff(np.asarray(MODALITIES["sfh"].axis), prepend=0.0) * 1e9
#: The low-redshift subsample of the ablation.
LOW_Z = 0.5


def sfh_conventions(sfh: np.ndarray) -> dict[str, np.ndarray]:
    """The SFH under each convention: star-formation rate (Msun/yr) or cumulative stellar mass formed
    (Msun, cumsum of SFR * dt on the registry grid), each absolute or shape-normalised (divided by the total
    mass formed over the whole history, which removes the amplitude and keeps the timing). Missing rates
    count as zero in the cumulative sum."""
    sfr = np.asarray(sfh, dtype=np.float64)
    formed = np.cumsum(np.nan_to_num(sfr) * _SFH_DT_YR, axis=1)
    total = formed[:, -1:]
    safe = np.where(total > 0, total, 1.0)
    return {
        "sfr": sfr,
        "sfr_shape": np.where(total > 0, sfr / safe, 0.0),
        "mass_formed": formed,
        "mass_formed_shape": np.where(total > 0, formed / safe, 0.0),
    }


def sfh_convention_ablation(
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    max_train: int | None = MAX_TRAIN,
    threads: int | None = THREADS,
) -> dict[str, float | None]:
    """Stellar-mass gain 1 - MAE(LSST + late SFH) / MAE(LSST + early SFH) of the gradient-boosting
    baseline under each SFH convention of `sfh_conventions`, on all galaxies and on the z < 0.5 subsample
    (train and test both cut). Needs columns lsst, sfh, log_stellar_mass, redshift. The training rows are
    subsampled to at most `max_train`. Returns {convention (", z<0.5" appended for the subsample): gain}."""

    from threadpoolctl import threadpool_limits

    def pick(columns, rows):
        return {k: np.asarray(columns[k])[rows] for k in ("lsst", "sfh", "log_stellar_mass", "redshift")}

    train = pick(train, _training_rows(train, "log_stellar_mass", max_train, seed))
    test = pick(test, np.arange(len(test["log_stellar_mass"])))
    samples = {"": (train, test)}
    low_train, low_test = (pick(cols, np.flatnonzero(cols["redshift"] < LOW_Z)) for cols in (train, test))
    if len(low_train["redshift"]) > 1 and len(low_test["redshift"]) > 0:
        samples[f", z<{LOW_Z:g}"] = (low_train, low_test)

    gains = {}
    with threadpool_limits(threads):
        for suffix, (tr, te) in samples.items():
            tr_conv, te_conv = sfh_conventions(tr["sfh"]), sfh_conventions(te["sfh"])
            for convention in tr_conv:
                mae = {}
                for window, elements in (("late", SFH_LATE), ("early", ~SFH_LATE)):
                    # Features in the order of `condition_features`: the SFH window, then the magnitudes.
                    X_tr = np.concatenate([tr_conv[convention][:, elements], tr["lsst"]], axis=1)
                    X_te = np.concatenate([te_conv[convention][:, elements], te["lsst"]], axis=1)
                    model = make_estimators(seed)["hgb"].fit(X_tr, tr["log_stellar_mass"])
                    mae[window] = regression_metrics(model.predict(X_te), te["log_stellar_mass"])["mae"]
                gains[convention + suffix] = gain(mae["late"], mae["early"])
    return gains
