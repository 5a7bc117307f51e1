"""Executors: how the driver turns a claimed unit into Ray work and publishes its result.

The driver only needs ``submit``, ``publish`` and ``reconcile``; the default executor runs
feature units as Ray tasks and training units as Ray Train inside a zero-CPU Ray task. The
no-op executor exists for the dispatch benchmark.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from rayorch.backfill.plan import Step, Unit
from rayorch.backfill.work import run_feature_unit
from rayorch.data import outputs
from rayorch.data.layout import PartitionManifest, read_committed_manifest
from rayorch.settings import Settings
from rayorch.spec import PipelineSpec


class UnitExecutor(Protocol):
    def submit(self, unit: Unit, token: int, generation: int) -> Any:
        """Start the unit's work; return a Ray ObjectRef resolving to a result dict.

        Under a scheduler the driver also passes ``placement=`` (a
        :class:`rayorch.backfill.scheduled.Placement`): where the admitted unit must run."""

    def publish(self, unit: Unit, result: dict[str, Any]) -> None:
        """After the ledger accepted the commit: make the output live."""

    def reconcile(self, unit: Unit, committed_output: dict[str, Any] | None) -> bool:
        """Roll a committed-but-unpublished output forward. True when it acted."""

    def request_yield(self, unit: Unit, token: int, why: str) -> bool:
        """Ask a running unit to checkpoint and stop at its next step. False: cannot yield
        (the caller cancels it instead)."""

    def live_progress(self, unit: Unit, generation: int) -> dict[str, Any] | None:
        """Where ``rayorch status`` finds the unit's live progress (None: none)."""


def _train_task(req: Any, placement: dict[str, Any] | None = None) -> dict[str, Any]:
    from rayorch.train.runner import run_train_unit

    return run_train_unit(req, placement=placement)


class RayExecutor:
    """Feature units as Ray tasks; training units as Ray Train launched from a Ray task."""

    def __init__(self, spec: PipelineSpec, settings: Settings) -> None:
        import ray

        from rayorch.env.runtime import unit_environment

        self.ray = ray
        self.env = unit_environment(spec, settings.db_url)  # refuses unpinned images first
        self.spec = spec
        self.settings = settings
        self.source_root = settings.resolve(spec.source.path)
        self.output_root = settings.resolve(spec.features.output)
        self._spec_ref = ray.put(spec)
        self._feature = ray.remote(max_retries=0)(run_feature_unit)
        self._train = ray.remote(num_cpus=0, max_retries=0)(_train_task)
        self._generation: dict[str, int] = {}

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> Any:
        if unit.step is Step.FEATURES:
            opts: dict[str, Any] = {"num_cpus": unit.cpus, **self.env.task_options()}
            if placement is not None and placement.pg is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                # The task waits for its placement group; the driver loop does not.
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement.pg,
                    placement_group_bundle_index=0,
                    placement_group_capture_child_tasks=False,
                )
            return self._feature.options(**opts).remote(
                self._spec_ref,
                self.source_root,
                self.output_root,
                unit,
                token,
                time.time(),
                self.env.context,
            )
        from rayorch.train.runner import TrainRequest

        self._generation[unit.run_key] = generation

        req = TrainRequest(self.spec, self.settings, unit, token, generation, env=self.env.context)
        # Ray Train workers started by this task inherit its runtime_env. Under a scheduler,
        # Ray Train's own placement group follows the plan (strategy, workers pinned to nodes).
        kwargs = placement.scaling_kwargs() if placement is not None else None
        return self._train.options(**self.env.task_options()).remote(req, kwargs)

    def publish(self, unit: Unit, result: dict[str, Any]) -> None:
        if unit.step is Step.FEATURES:
            manifest = PartitionManifest.from_dict(result["manifest"])
            outputs.publish(self.output_root, unit.partition, manifest)

    def reconcile(self, unit: Unit, committed_output: dict[str, Any] | None) -> bool:
        if unit.step is not Step.FEATURES or not committed_output:
            return False
        want = PartitionManifest.from_dict(committed_output["manifest"])
        live = read_committed_manifest(self.output_root, unit.partition)
        if live is not None and (live.token or 0) >= (want.token or 0):
            return False
        outputs.publish(self.output_root, unit.partition, want)
        return True

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


def _noop(unit: Unit, token: int) -> dict[str, Any]:
    return {"kind": "noop", "token": token}


class NoopExecutor:
    """Dispatches a no-op Ray task per unit (benchmarks measure pure orchestration cost)."""

    def __init__(self) -> None:
        import ray

        self._task = ray.remote(num_cpus=1, max_retries=0)(_noop)

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> Any:
        return self._task.remote(unit, token)

    def publish(self, unit: Unit, result: dict[str, Any]) -> None:
        return None

    def reconcile(self, unit: Unit, committed_output: dict[str, Any] | None) -> bool:
        return False

    def request_yield(self, unit: Unit, token: int, why: str) -> bool:
        return False

    def live_progress(self, unit: Unit, generation: int) -> dict[str, Any] | None:
        return None
