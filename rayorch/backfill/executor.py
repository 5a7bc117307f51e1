"""Executors: how the driver turns a claimed unit into Ray work and publishes its result.

The driver only needs ``submit``, ``publish_many`` and ``reconcile_many``; the default executor
runs feature units as Ray tasks and training units as Ray Train inside a zero-CPU Ray task, and
publishes every committed feature partition of a loop turn in one Iceberg table commit. The
no-op executor exists for the dispatch benchmark.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rayorch.backfill.grouping import GroupPolicy, Member, TaskGroups
from rayorch.backfill.plan import Step, Unit
from rayorch.backfill.work import run_feature_units
from rayorch.data import outputs, storage
from rayorch.data.tables import Published, PublishResult, StepTable
from rayorch.results import Noop
from rayorch.settings import Settings
from rayorch.spec import PipelineSpec

_COMMIT_BATCH = 64
RESULT_LINGER_S = 0.02  # after the first result, how long wait() gathers more (turns batch)
_SLOTS_TTL_S = 10.0  # how long the cluster's CPU count is trusted for sizing groups


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What resuming found for a committed unit."""

    class Outcome(str, enum.Enum):
        NOTHING = "nothing to do"
        ROLLED_FORWARD = "publish rolled forward"
        MISSING = "committed output missing: re-run"

    outcome: Outcome
    why: str = ""
    extra: dict[str, Any] | None = None


class UnitExecutor(Protocol):
    """The driver's runner: starts work, waits for it, publishes it. Injected, so the driver
    is tested in-process with a runner that needs no Ray."""

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> Any:
        """Start the unit's work; return a handle (a Ray ObjectRef) for ``wait``.
        ``placement`` (a :class:`rayorch.backfill.scheduled.Placement`): where it must run."""

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Any]]:
        """Finished handles with their result (a WorkResult) or the exception they raised."""

    def cancel(self, handle: Any) -> None:
        """Stop a running attempt (its claim is released or taken over separately)."""

    def publish_many(self, items: Sequence[tuple[Unit, int, Any]]) -> list[dict[str, Any] | None]:
        """After the ledger accepted the commits: make the outputs live (feature partitions
        replaced in one table commit, model versions registered). Returns, per item, what to
        add to its committed output."""

    def reconcile_many(
        self, items: Sequence[tuple[Unit, int, dict[str, Any] | None]]
    ) -> list[Reconciled]:
        """On resume, per committed unit: roll a committed-but-unpublished output forward, or
        report it gone."""

    def request_yield(self, unit: Unit, token: int, why: str) -> bool:
        """Ask a running unit to checkpoint and stop at its next step. False: cannot yield
        (the caller cancels it instead)."""

    def live_progress(self, unit: Unit, generation: int) -> dict[str, Any] | None:
        """Where ``rayorch status`` finds the unit's live progress (None: none)."""


def train_target(unit: Unit) -> Any:
    """The training layer's view of a planned unit (it never sees the planner's types)."""
    from rayorch.train.runner import TrainTarget

    return TrainTarget(unit.run_key, unit.day, tuple(unit.inputs))


def _train_task(req: Any, placement: dict[str, Any] | None = None) -> Any:
    from rayorch.train.runner import run_train_unit

    return run_train_unit(req, placement=placement)


def _publish_train_task(req: Any, result: Any) -> dict[str, Any]:
    from rayorch.train.runner import publish_trained

    return publish_trained(req, result)


def _ray_wait(handles: list[Any], timeout: float) -> list[tuple[Any, Any]]:
    """Finished refs with results; lingers briefly so results commit in batches."""
    import ray

    if not handles:
        return []
    done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
    if done and len(handles) > 1:
        rest = [r for r in handles if r != done[0]]
        more, _ = ray.wait(rest, num_returns=min(len(rest), _COMMIT_BATCH), timeout=RESULT_LINGER_S)
        done = done + more
    out: list[tuple[Any, Any]] = []
    for ref in done:
        try:
            out.append((ref, ray.get(ref)))
        except Exception as exc:
            out.append((ref, exc))
    return out


class RayExecutor:
    """Feature units as Ray tasks; training units as Ray Train launched from a Ray task."""

    def __init__(self, spec: PipelineSpec, settings: Settings) -> None:
        import ray

        from rayorch.env.runtime import unit_environment

        self.ray = ray
        self.env = unit_environment(spec, settings.db_url)  # refuses unpinned images first
        if spec.train is not None:
            from rayorch.lineage.tracking import ensure_tracking_store

            ensure_tracking_store(settings.mlflow_uri)  # migrated once, before any worker
        self.spec = spec
        self.settings = settings
        self.source_root = settings.resolve(spec.source.path)
        self.table = StepTable.for_spec(spec, settings)
        self.table.refuse_old_layout()
        self._spec_ref = ray.put(spec)
        self._feature = ray.remote(max_retries=0)(run_feature_units)
        grouping = spec.features.grouping
        self.groups = TaskGroups(
            self._launch_features,
            GroupPolicy(grouping.target_task_s, grouping.max_partitions),
            self._slots,
        )
        self._slots_at: tuple[float, int] | None = None
        self._train = ray.remote(num_cpus=0, max_retries=0)(_train_task)
        self._publish_train = ray.remote(num_cpus=0, max_retries=0)(_publish_train_task)
        self._generation: dict[str, int] = {}

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> Any:
        if unit.step is Step.FEATURES:
            if placement is None or placement.pg is None:
                return self.groups.add((unit, token))  # launched, grouped, by ``wait``
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            # The task waits for its placement group; the driver loop does not.
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=placement.pg,
                placement_group_bundle_index=0,
                placement_group_capture_child_tasks=False,
            )
            return self.groups.launch_alone(
                (unit, token),
                lambda items: self._launch_features(items, scheduling_strategy=strategy),
            )
        self._generation[unit.run_key] = generation
        req = self._train_request(unit, token, generation)
        # Ray Train workers started by this task inherit its runtime_env. Under a scheduler,
        # Ray Train's own placement group follows the plan (strategy, workers pinned to nodes).
        kwargs = placement.scaling_kwargs() if placement is not None else None
        return self._train.options(**self.env.task_options()).remote(req, kwargs)

    def _launch_features(self, items: list[tuple[Unit, int]], **options: Any) -> Any:
        opts: dict[str, Any] = {"num_cpus": items[0][0].cpus, **self.env.task_options()}
        return self._feature.options(**opts, **options).remote(
            self._spec_ref, self.source_root, self.settings, items, time.time(), self.env.context
        )

    def _slots(self) -> int:
        """Feature tasks the cluster runs at once (its CPUs over a unit's), re-read now and
        then: an autoscaled cluster grows."""
        now = time.monotonic()
        if self._slots_at is None or now - self._slots_at[0] > _SLOTS_TTL_S:
            cpus = float(self.ray.cluster_resources().get("CPU", 1.0))
            self._slots_at = (now, max(1, int(cpus // self.spec.features.num_cpus)))
        return self._slots_at[1]

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Any]]:
        return wait_grouped(self.groups, handles, timeout, _ray_wait)

    def cancel(self, handle: Any) -> None:
        task = self.groups.cancel(handle) if isinstance(handle, Member) else handle
        if task is not None:
            self.ray.cancel(task, force=True)

    def _train_request(self, unit: Unit, token: int, generation: int) -> Any:
        from rayorch.train.runner import TrainRequest

        return TrainRequest(
            self.spec, self.settings, train_target(unit), token, generation, env=self.env.context
        )

    def publish_many(self, items: Sequence[tuple[Unit, int, Any]]) -> list[dict[str, Any] | None]:
        features = [
            outputs.publish_item(res.manifest) for u, _, res in items if u.step is Step.FEATURES
        ]
        published = {r.run_key: r for r in self.table.publish_many(features)}
        extras: list[dict[str, Any] | None] = []
        for unit, token, result in items:
            if unit.step is Step.FEATURES:
                got = published[unit.run_key]
                extras.append(_published(got))
                continue
            # Behind the fence: only a committed attempt registers its model and ends its run.
            req = self._train_request(unit, token, self._generation.get(unit.run_key, 0))
            extras.append(
                self.ray.get(
                    self._publish_train.options(**self.env.task_options()).remote(req, result)
                )
            )
        return extras

    def reconcile_many(
        self, items: Sequence[tuple[Unit, int, dict[str, Any] | None]]
    ) -> list[Reconciled]:
        """Compare each committed feature unit with the table's current snapshot: live at
        its token or newer -> nothing; older or absent -> publish it (rolled forward) if its
        files are still there, else it is re-run."""
        out: dict[int, Reconciled] = {}
        feats: list[tuple[int, Unit, int, dict[str, Any]]] = []
        for i, (unit, token, output) in enumerate(items):
            if not output:
                out[i] = Reconciled(Reconciled.Outcome.NOTHING)
            elif unit.step is Step.TRAIN:
                out[i] = self._reconcile_train(unit, token, output)
            elif "files" not in (output.get("manifest") or {}):
                out[i] = Reconciled(
                    Reconciled.Outcome.MISSING,
                    "the commit predates Iceberg tables (no data files recorded)",
                )
            else:
                feats.append((i, unit, token, output["manifest"]))
        live = self.table.live([u.partition for _, u, _, _ in feats]) if feats else {}
        todo = []
        for i, unit, token, staged in feats:
            cur = live.get(str(unit.partition))
            if cur is not None and cur.token >= token:
                out[i] = Reconciled(Reconciled.Outcome.NOTHING)
                continue
            gone = [f["path"] for f in staged["files"] if not _exists(f["path"])]
            if gone:
                out[i] = Reconciled(
                    Reconciled.Outcome.MISSING,
                    f"{unit.partition}: {len(gone)} committed file(s) gone, e.g. {gone[0]}",
                )
                continue
            todo.append((i, outputs.publish_item(staged)))
        for (i, _), got in zip(todo, self.table.publish_many([it for _, it in todo]), strict=True):
            out[i] = Reconciled(Reconciled.Outcome.ROLLED_FORWARD, extra=_published(got))
        return [out[i] for i in range(len(items))]

    def _reconcile_train(self, unit: Unit, token: int, output: dict[str, Any]) -> Reconciled:
        from rayorch.results import Trained

        if output.get("model_version") or self.spec.registry is None:
            return Reconciled(Reconciled.Outcome.NOTHING)
        checkpoint = output.get("checkpoint")
        if not checkpoint or ("://" not in checkpoint and not os.path.exists(checkpoint)):
            return Reconciled(Reconciled.Outcome.MISSING, f"checkpoint {checkpoint} is gone")
        result = Trained(
            output["mlflow_run_id"],
            checkpoint,
            output.get("dataset_digest", ""),
            output.get("metrics", {}),
            tuple(output.get("inputs", [])),
            output.get("training", {}),
            output.get("model_name"),
            output.get("sample_file"),
        )
        req = self._train_request(unit, token, self._generation.get(unit.run_key, 0))
        extra = self.ray.get(
            self._publish_train.options(**self.env.task_options()).remote(req, result)
        )
        return Reconciled(Reconciled.Outcome.ROLLED_FORWARD, extra=extra)

    def _run_files(self, unit: Unit, generation: int) -> Any:
        from rayorch.train.control import RunFiles
        from rayorch.train.runner import train_run_name

        assert self.spec.train is not None
        storage = self.settings.resolve(self.spec.train.checkpoint.storage_path)
        return RunFiles(storage, train_run_name(unit.run_key, generation))

    def request_yield(self, unit: Unit, token: int, why: str) -> bool:
        if unit.step is not Step.TRAIN:
            return False
        self._run_files(unit, self._generation.get(unit.run_key, 0)).request_yield(why, token)
        return True

    def live_progress(self, unit: Unit, generation: int) -> dict[str, Any] | None:
        if unit.step is not Step.TRAIN:
            return None
        files = self._run_files(unit, generation)
        return {"storage": files.storage, "run_name": files.run_name}


def wait_grouped(
    groups: TaskGroups,
    handles: list[Any],
    timeout: float,
    wait: Any,
) -> list[tuple[Any, Any]]:
    """Launch what is pending, then wait for tasks: a grouped task's end answers for each of
    its live members, any other handle (a training task) for itself. ``wait``: the task
    system's (Ray's ``_ray_wait``, a process pool's in the benchmark)."""
    groups.flush()
    members = [h for h in handles if isinstance(h, Member)]
    tasks = [h for h in handles if not isinstance(h, Member)] + groups.tasks(members)
    out: list[tuple[Any, Any]] = []
    for task, outcome in wait(tasks, timeout):
        if groups.owns(task):
            out += groups.finished(task, outcome)
        else:
            out.append((task, outcome))
    return out


def _published(got: PublishResult) -> dict[str, Any] | None:
    """What the ledger adds to a feature commit once its table commit landed."""
    if got.outcome is Published.STALE or got.snapshot_id is None:
        return None
    return {"snapshot_id": got.snapshot_id, "published": got.outcome.name}


def _exists(uri: str) -> bool:
    fs, path = storage.filesystem_for(uri)
    return storage.exists(fs, path)


def _noop(unit: Unit, token: int) -> Noop:
    return Noop(token)


class NoopExecutor:
    """Dispatches a no-op Ray task per unit (benchmarks measure pure orchestration cost)."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self._task = ray.remote(num_cpus=1, max_retries=0)(_noop)

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> Any:
        return self._task.remote(unit, token)

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Any]]:
        return _ray_wait(handles, timeout)

    def cancel(self, handle: Any) -> None:
        self.ray.cancel(handle, force=True)

    def publish_many(self, items: Sequence[tuple[Unit, int, Any]]) -> list[dict[str, Any] | None]:
        return [None] * len(items)

    def reconcile_many(
        self, items: Sequence[tuple[Unit, int, dict[str, Any] | None]]
    ) -> list[Reconciled]:
        return [Reconciled(Reconciled.Outcome.NOTHING)] * len(items)

    def request_yield(self, unit: Unit, token: int, why: str) -> bool:
        return False

    def live_progress(self, unit: Unit, generation: int) -> dict[str, Any] | None:
        return None
