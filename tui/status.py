"""Source health as the header and the banner show it: the backend's own health probes plus the
failures of the app's own calls (a worker that raises marks its component degraded; its next
success clears it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.models import HealthState, SourceHealth


@dataclass(slots=True)
class SourceStatus:
    probes: list[SourceHealth] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # component -> reason
    last_good_ns: int | None = None

    @property
    def state(self) -> HealthState:
        if self.failures:
            return HealthState.DEGRADED
        worst = HealthState.OK
        for p in self.probes:
            if p.state == HealthState.DOWN:
                return HealthState.DOWN
            if p.state == HealthState.DEGRADED:
                worst = HealthState.DEGRADED
        return worst

    @property
    def degraded(self) -> bool:
        return self.state != HealthState.OK

    def reasons(self) -> list[str]:
        out = [f"{p.name}: {p.reason or p.state.value}" for p in self.probes if p.state != "ok"]
        out += [f"{comp}: {why}" for comp, why in sorted(self.failures.items())]
        return out

    def fail(self, component: str, reason: str) -> bool:
        """Record a failure; True when this changes what the user sees."""
        changed = self.failures.get(component) != reason
        self.failures[component] = reason
        return changed

    def succeed(self, component: str, now_ns: int) -> bool:
        """Record a success; True when it clears a failure."""
        self.last_good_ns = now_ns
        return self.failures.pop(component, None) is not None

    def set_probes(self, probes: list[SourceHealth]) -> bool:
        before = [(p.name, p.state, p.reason) for p in self.probes]
        self.probes = probes
        return before != [(p.name, p.state, p.reason) for p in probes]


def describe(exc: BaseException) -> str:
    """An exception as one readable line (agentlog's own errors are already written for users)."""
    from backend.errors import AgentlogError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, AgentlogError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
