"""A tuning study: one folder, an ask/tell loop, a checkpoint after every iteration.

``<workspace>/studies/NAME/``::

    study.json        what the study is (space, objective, optimiser, seed, evaluator
                      descriptor); written once, atomically
    evaluations.jsonl every evaluation, one JSON line each, appended (and fsynced) after every
                      iteration
    checkpoint.json   the optimiser state (its generator included), the iteration, and how
                      many evaluations (bytes of evaluations.jsonl) it covers; replaced
                      atomically after every iteration, right after the append
    candidates.json   top-K configurations + the engine default, with launch arguments
    candidates.md     the same as a table
    plots/            convergence.png, pareto.png

Because the optimiser state is saved after ``tell`` and evaluators are deterministic, a study
killed at any moment (``kill -9`` included) and resumed with :meth:`Study.load` then
:meth:`Study.run` ends with exactly the evaluations and best configuration of an uninterrupted
run with the same seed: at most the iteration in flight is recomputed. Lines appended to the log
beyond what the checkpoint covers (an iteration whose checkpoint never landed, a torn line) are
cut off on load. Each iteration writes only its own evaluations, so checkpointing stays linear
in the study's size.

Example:
    >>> study = Study.create(tmp / "s", space=SearchSpace.builtin("transformers-cb"),
    ...                      optimizer={"name": "random", "budget": 8}, seed=1)  # doctest: +SKIP
    >>> result = study.run(my_evaluator)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from servetune import ConfigError, ServetuneError
from servetune.data import atomic_write_text, metric_name
from servetune.tuner._base import Evaluator, Optimizer
from servetune.tuner._baselines import GridSearch, RandomSearch
from servetune.tuner._objective import Objective, parse_objective
from servetune.tuner._pso import PSO, PSOConfig
from servetune.tuner._space import SearchSpace

__all__ = ["Study", "StudySpec", "Evaluation", "make_optimizer", "config_key", "STUDY_FILE",
           "CHECKPOINT_FILE", "EVALUATIONS_FILE", "OPTIMIZERS"]

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
CHECKPOINT_FILE = "checkpoint.json"
EVALUATIONS_FILE = "evaluations.jsonl"
OPTIMIZERS = ("pso", "random", "grid")
_FORMAT = 2


@dataclass(frozen=True)
class StudySpec:
    """What a study is; everything needed to rebuild it on resume."""

    name: str
    space: dict
    objective: str
    optimizer: dict
    seed: int
    evaluator: dict = field(default_factory=dict)
    uid: str = ""
    created: str = ""


@dataclass
class Evaluation:
    """One proposed point: its configuration, status, score and raw metrics.

    ``status`` is ``ok`` (evaluated, or ``cached`` from an identical earlier configuration),
    ``infeasible`` (violates a constraint that could not be repaired; never evaluated) or
    ``failed`` (the evaluator raised; ``error`` says why). Only ``ok`` points have a score.
    """

    index: int
    iteration: int
    config: dict
    status: str
    score: float | None = None
    metrics: dict = field(default_factory=dict)
    cached: bool = False
    repaired: bool = False
    error: str | None = None

    @property
    def value(self) -> float:
        """The score as the optimiser sees it (``-inf`` unless ``ok``)."""
        return self.score if self.status == "ok" and self.score is not None else -math.inf


def config_key(config: dict) -> str:
    """Canonical text of a configuration (cache key, de-duplication)."""
    return json.dumps(config, sort_keys=True, default=str)


def make_optimizer(spec: dict, space: SearchSpace, seed: int) -> Optimizer:
    """An optimiser from its spec: ``{"name": "pso"|"random"|"grid", ...settings}``."""
    spec = dict(spec)
    name = spec.pop("name", "pso")
    if name == "pso":
        known = set(PSOConfig.__dataclass_fields__)
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown PSO settings {sorted(unknown)}; valid: {sorted(known)}")
        return PSO(space.dim, PSOConfig(**spec), seed=seed)
    if name == "random":
        return RandomSearch(space.dim, budget=int(spec.get("budget", 600)),
                            batch_size=int(spec.get("batch_size", 30)), seed=seed)
    if name == "grid":
        points = np.array([space.encode(t) for t in space.grid(int(spec.get("levels", 5)))])
        return GridSearch(points, batch_size=int(spec.get("batch_size", 30)))
    raise ConfigError(f"unknown optimiser {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class Study:
    """An ask/tell loop over a search space, checkpointed in its own folder.

    Build with :meth:`create` (new) or :meth:`load` (resume); the constructor does no I/O.
    """

    def __init__(self, directory: Path, spec: StudySpec) -> None:
        self.directory = Path(directory)
        self.spec = spec
        self.space = SearchSpace.from_dict(spec.space, source=f"{directory}/{STUDY_FILE}")
        self.objective: Objective = parse_objective(spec.objective)
        self.optimizer = make_optimizer(spec.optimizer, self.space, spec.seed)
        self.records: list[Evaluation] = []
        self.iteration = 0
        self.status = "new"
        self.tracking_run_id: str | None = None
        self._logged = 0  # records already in evaluations.jsonl
        self._log_bytes = 0  # its committed length

    # -- persistence ------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, *, space: SearchSpace, objective: str | Objective =
               "goodput", optimizer: dict | None = None, seed: int = 0,
               evaluator: dict | None = None, name: str | None = None) -> "Study":
        """Start a new study in ``directory`` (which must not hold one already)."""
        directory = Path(directory)
        if (directory / STUDY_FILE).exists():
            raise ConfigError(f"{directory} already holds a study; resume it with --resume "
                              f"{directory.name} or choose another --study name")
        objective_spec = objective.spec() if isinstance(objective, Objective) else objective
        spec = StudySpec(name=name or directory.name, space=space.to_dict(),
                         objective=parse_objective(objective_spec).spec(),
                         optimizer=dict(optimizer or {"name": "pso"}), seed=int(seed),
                         evaluator=dict(evaluator or {}), uid=uuid.uuid4().hex,
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        study = cls(directory, spec)  # validates everything before anything is written
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / STUDY_FILE, json.dumps(asdict(spec), indent=1))
        return study

    @classmethod
    def load(cls, directory: str | Path) -> "Study":
        """Reopen a study and its last checkpoint."""
        directory = Path(directory)
        try:
            spec = StudySpec(**json.loads((directory / STUDY_FILE).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"no study in {directory} ({STUDY_FILE} missing)") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"{directory / STUDY_FILE}: unreadable study file: {exc}") from None
        study = cls(directory, spec)
        for stale in directory.glob(f"{CHECKPOINT_FILE}.tmp-*"):  # a write cut by a kill
            stale.unlink(missing_ok=True)
        path = directory / CHECKPOINT_FILE
        if path.exists():
            try:
                state = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: unreadable checkpoint: {exc}") from None
            if state.get("format") != _FORMAT or state.get("uid") != spec.uid:
                raise ConfigError(f"{path}: checkpoint does not belong to this study")
            study.optimizer.load_state_dict(state["optimizer"])
            study.records = _read_log(directory / EVALUATIONS_FILE, int(state["records"]),
                                      int(state["log_bytes"]))
            study._logged, study._log_bytes = len(study.records), int(state["log_bytes"])
            study.iteration = int(state["iteration"])
            study.status = state["status"]
            study.tracking_run_id = state.get("tracking_run_id")
        return study

    def checkpoint(self) -> None:
        """Append the new evaluations (fsynced), then replace the checkpoint atomically."""
        if self._logged < len(self.records):
            lines = "".join(json.dumps(asdict(r)) + "\n" for r in self.records[self._logged:])
            with open(self.directory / EVALUATIONS_FILE, "ab") as handle:
                handle.seek(self._log_bytes)
                handle.truncate()
                handle.write(lines.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
                self._log_bytes = handle.tell()
            self._logged = len(self.records)
        state = {"format": _FORMAT, "uid": self.spec.uid, "iteration": self.iteration,
                 "status": self.status, "tracking_run_id": self.tracking_run_id,
                 "optimizer": self.optimizer.state_dict(), "records": self._logged,
                 "log_bytes": self._log_bytes}
        atomic_write_text(self.directory / CHECKPOINT_FILE, json.dumps(state))

    # -- the loop ---------------------------------------------------------------------------
    def run(self, evaluator: Evaluator, *, executor: Executor | None = None,
            on_iteration: Callable[["Study", list[Evaluation]], None] | None = None,
            max_iterations: int | None = None, parallelism: int = 1) -> "Study":
        """Iterate until the optimiser is done (or ``max_iterations`` more iterations).

        Args:
            evaluator: config dict -> metrics dict (picklable when an executor is given).
            executor: where evaluations run (a process pool, a Dask executor); inline if None.
            on_iteration: called after each checkpoint with the iteration's evaluations
                (progress bars, MLflow logging).
            max_iterations: stop after this many iterations of this call (tests, budgets).
            parallelism: how many workers the executor has; each iteration's new
                configurations are sent as this many chunks, so the evaluator (workload and
                model arrays) is pickled once per chunk rather than once per configuration.
        """
        done_here = 0
        while not self.optimizer.done:
            if max_iterations is not None and done_here >= max_iterations:
                return self
            points = self.optimizer.ask()
            batch = self._evaluate(points, evaluator, executor, parallelism)
            self.optimizer.tell(points, np.array([r.value for r in batch]))
            self.records.extend(batch)
            self.iteration += 1
            done_here += 1
            if self.optimizer.done:
                self.status = "finished"
            else:
                self.status = "running"
            self.checkpoint()
            if not any(r.status == "ok" for r in self.records) and any(
                    r.status == "failed" for r in batch):
                first = next(r for r in batch if r.status == "failed")
                raise ServetuneError(f"every evaluation so far failed; first error: "
                                     f"{first.error}")
            if on_iteration is not None:
                on_iteration(self, batch)
        if self.status != "finished":
            self.status = "finished"
            self.checkpoint()
        return self

    def _evaluate(self, points: np.ndarray, evaluator: Evaluator,
                  executor: Executor | None, parallelism: int = 1) -> list[Evaluation]:
        known = {config_key(r.config): r for r in self.records
                 if r.status in ("ok", "failed") and not r.cached}
        batch: list[Evaluation] = []
        to_run: dict[str, list[Evaluation]] = {}
        for offset, u in enumerate(points):
            point = self.space.resolve(self.space.decode(u))
            record = Evaluation(index=len(self.records) + offset, iteration=self.iteration,
                                config=point.config, status="pending", repaired=point.repaired)
            batch.append(record)
            if not point.feasible:
                record.status = "infeasible"
                record.error = "violates " + "; ".join(point.violations)
                continue
            key = config_key(point.config)
            if key in known:
                _copy_result(record, known[key])
            elif key in to_run:
                to_run[key].append(record)
            else:
                to_run[key] = [record]
        configs = [records[0].config for records in to_run.values()]
        results = _run_all(evaluator, configs, executor, parallelism)
        for records, (metrics, error) in zip(to_run.values(), results):
            first = records[0]
            if error is None:
                first.metrics = metrics
                try:
                    first.score = float(self.objective.score(metrics))
                    first.status = "ok"
                except ServetuneError as exc:
                    first.status, first.error = "failed", str(exc)
            else:
                first.status, first.error = "failed", error
            for twin in records[1:]:
                _copy_result(twin, first)
        return batch

    # -- results ----------------------------------------------------------------------------
    @property
    def evaluated(self) -> list[Evaluation]:
        """Evaluations with a score."""
        return [r for r in self.records if r.status == "ok"]

    def best(self) -> Evaluation | None:
        """The highest-scoring evaluation (earliest wins ties)."""
        scored = self.evaluated
        return max(scored, key=lambda r: (r.score, -r.index)) if scored else None

    def top(self, k: int) -> list[Evaluation]:
        """The ``k`` best distinct configurations."""
        seen: set[str] = set()
        out = []
        for r in sorted(self.evaluated, key=lambda r: (-r.score, r.index)):
            key = config_key(r.config)
            if key not in seen:
                seen.add(key)
                out.append(r)
            if len(out) == k:
                break
        return out

    def history(self) -> list[float]:
        """Best score after each iteration (``nan`` while nothing is feasible)."""
        out, best = [], -math.inf
        for it in range(self.iteration):
            scores = [r.score for r in self.records if r.iteration == it and r.status == "ok"]
            if scores:
                best = max(best, max(scores))
            out.append(best if math.isfinite(best) else float("nan"))
        return out


def _read_log(path: Path, count: int, size: int) -> list[Evaluation]:
    """The first ``count`` evaluations (``size`` bytes) of the log; anything after them — an
    iteration whose checkpoint never landed, a torn line — is cut off."""
    try:
        with open(path, "r+b") as handle:
            data = handle.read(size)
            if handle.seek(0, os.SEEK_END) > size:
                handle.truncate(size)
    except FileNotFoundError:
        data = b""
    lines = data.decode("utf-8").splitlines()
    if len(data) != size or len(lines) != count:
        raise ConfigError(f"{path}: holds {len(lines)} evaluations in {len(data)} bytes; the "
                          f"checkpoint expects {count} in {size}: the study folder is damaged")
    records = [Evaluation(**json.loads(line)) for line in lines]
    for record in records:  # logs written before the metric names were unified: ttft_ms_p90
        record.metrics = {metric_name(k): v for k, v in record.metrics.items()}
    return records


def _copy_result(record: Evaluation, source: Evaluation) -> None:
    record.status, record.score, record.error = source.status, source.score, source.error
    record.metrics = dict(source.metrics)
    record.cached = True


def _run_all(evaluator: Evaluator, configs: list[dict], executor: Executor | None,
             parallelism: int) -> list[tuple[dict, str | None]]:
    """Evaluate in order; an exception becomes that config's error, never the whole batch's."""
    if executor is None or not configs:
        return _guarded_chunk(evaluator, configs)
    n = max(1, min(int(parallelism), len(configs)))
    bounds = np.linspace(0, len(configs), n + 1).astype(int)
    futures = [executor.submit(_guarded_chunk, evaluator, configs[a:b])
               for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return [out for f in futures for out in f.result()]


def _guarded_chunk(evaluator: Evaluator, configs: list[dict]) -> list[tuple[dict, str | None]]:
    return [_guarded(evaluator, c) for c in configs]


def _guarded(evaluator: Evaluator, config: dict) -> tuple[dict, str | None]:
    try:
        metrics = evaluator(config)
    except Exception as exc:  # noqa: BLE001 - recorded with its reason, never silently scored
        return {}, f"{type(exc).__name__}: {exc}"
    return {k: _plain(v) for k, v in metrics.items()}, None


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
