"""The stage graph: checked before anything runs, ordered with graphlib."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from graphlib import CycleError, TopologicalSorter

from pipeline.errors import GraphError
from pipeline.stage import Stage


class StageGraph:
    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages: dict[str, Stage] = {}
        for stage in stages:
            if stage.name in self.stages:
                raise GraphError(f"stage {stage.name!r} is declared twice")
            self.stages[stage.name] = stage
        for stage in stages:
            for dep in stage.after:
                if dep not in self.stages:
                    raise GraphError(f"stage {stage.name!r} runs after unknown stage {dep!r}")
        try:
            self._order = list(TopologicalSorter({s.name: s.after for s in stages}).static_order())
        except CycleError as exc:
            raise GraphError(f"stages form a cycle: {' -> '.join(exc.args[1])}") from exc

    def get(self, name: str) -> Stage:
        if name not in self.stages:
            raise GraphError(f"unknown stage {name!r}", hint=f"stages: {', '.join(self._order)}")
        return self.stages[name]

    def ancestors(self, name: str) -> set[str]:
        found: set[str] = set()
        pending = list(self.get(name).after)
        while pending:
            dep = pending.pop()
            if dep not in found:
                found.add(dep)
                pending.extend(self.stages[dep].after)
        return found

    def order(self, targets: Iterable[str] | None = None, *, with_upstream: bool = True) -> list[Stage]:
        """Stages to consider, in run order: all, or the targets (and their upstream stages)."""
        if targets is None:
            return [self.stages[name] for name in self._order]
        wanted: set[str] = set()
        for name in targets:
            self.get(name)
            wanted.add(name)
            if with_upstream:
                wanted |= self.ancestors(name)
        return [self.stages[name] for name in self._order if name in wanted]
