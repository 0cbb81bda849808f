"""Rollout gauges: each unfinished rollout's step and its last decision's figures, and
rolled-back rollouts by cause, as this server last read them from the registry.

The registry watcher hands over the rollouts of the serving view it reads at every poll (a
driver's `wait` decisions change no routing, so they would never come with a reload alone)
and has the rollbacks read again whenever the registry revision moves (a rollback always
moves it). A rollout that ends is gone from the next view, and its series with it. Every
replica reports the same values: aggregate them with max().
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.rollouts.book import RolloutBook, RolloutRecord

# Label value -> the decision's field (see the driver's decision dict).
BOUNDS = {"estimate": "win_rate", "lower": "win_rate_low", "upper": "win_rate_high"}
VERDICTS = {"candidate": "wins", "baseline": "losses", "tie": "ties", "abstained": "abstained"}
ACTIONS = ("wait", "advance", "rollback")


class RolloutGauges(Collector):
    def __init__(self, book: RolloutBook) -> None:
        self.book = book
        self.rollouts: tuple[RolloutRecord, ...] = ()
        self.rollbacks: Mapping[tuple[str, str], int] = {}  # (adapter, cause) -> rollouts
        self.rollbacks_revision = -1  # the registry revision they were read at

    def show(self, rollouts: Iterable[RolloutRecord]) -> None:
        self.rollouts = tuple(rollouts)

    def read_rollbacks(self, revision: int) -> None:
        """Blocking (a database read): call it off the event loop."""
        try:
            self.rollbacks = self.book.rollbacks_by_cause()
        except RegistryUnavailable:  # the watcher reports the outage; read at a later poll
            return
        self.rollbacks_revision = revision

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rollouts = self.rollouts  # one consistent set for the whole scrape
        yield self._steps(rollouts)
        yield self._by_figure(
            rollouts,
            "loraloop_rollout_win_rate",
            "The candidate's judged win rate at the "
            "last decision on its rollout, in the step that decision judged, and the bounds "
            "of its interval.",
            "bound",
            BOUNDS,
        )
        yield self._by_figure(
            rollouts,
            "loraloop_rollout_comparisons",
            "Judged shadow comparisons at the last decision on the rollout, by verdict.",
            "verdict",
            VERDICTS,
        )
        yield self._decisions(rollouts)
        yield self._rollbacks()

    @staticmethod
    def _steps(rollouts: tuple[RolloutRecord, ...]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "loraloop_rollout_step",
            "Each unfinished rollout's step: an index into its plan; "
            "the number of steps is the watch after the candidate became live.",
            labels=["adapter", "version", "stage"],
        )
        for r in rollouts:
            family.add_metric([r.adapter_id, str(r.candidate), r.stage], r.step)
        return family

    @staticmethod
    def _by_figure(
        rollouts: tuple[RolloutRecord, ...],
        name: str,
        documentation: str,
        label: str,
        fields: Mapping[str, str],
    ) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=["adapter", "version", label])
        for r in rollouts:
            for value, key in fields.items():
                figure = _number(r.decision.get(key))
                if figure is not None:
                    family.add_metric([r.adapter_id, str(r.candidate), value], figure)
        return family

    @staticmethod
    def _decisions(rollouts: tuple[RolloutRecord, ...]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "loraloop_rollout_decision",
            "The last decision on each unfinished rollout: 1 for "
            "its action, 0 for the others (all 0 before the first).",
            labels=["adapter", "version", "action"],
        )
        for r in rollouts:
            for action in ACTIONS:
                family.add_metric(
                    [r.adapter_id, str(r.candidate), action],
                    int(r.decision.get("action") == action),
                )
        return family

    def _rollbacks(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "loraloop_rollout_rollbacks",
            "Rollouts rolled back, by adapter and the cause their decision names, all drivers.",
            labels=["adapter", "cause"],
        )
        for (adapter_id, cause), count in sorted(self.rollbacks.items()):
            family.add_metric([adapter_id, cause], count)
        return family


def _number(value: object) -> float | None:
    """A figure from a decision another process wrote; anything but a number is skipped."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
