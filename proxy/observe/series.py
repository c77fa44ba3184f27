"""Counters and histograms for the per-request path: a dict update each, formatted only when scraped.

prometheus_client takes a lock and checks observability on every `inc` and `observe` (about 2 µs
each, a dozen per request). Everything that counts here runs on the event loop's thread, so a
plain dict of label tuples is enough; `Series` is a prometheus_client collector, so /metrics shows
these families exactly as the library's own Counter and Histogram would (no `_created` series).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class CounterSeries:
    __slots__ = ("help", "labelnames", "name", "values")

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name, self.help, self.labelnames = name.removesuffix("_total"), help, tuple(labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class HistogramSeries:
    """Per label tuple: one count per bucket (not cumulative; the last is +Inf), then the sum."""

    __slots__ = ("bounds", "help", "labelnames", "les", "name", "values")

    def __init__(self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self.les = (*(floatToGoString(b) for b in self.bounds), "+Inf")
        self.values: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        counts[-1] += value

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labelnames)
        for labels, counts in self.values.items():
            total, buckets = 0.0, []
            for le, count in zip(self.les, counts, strict=False):
                total += count
                buckets.append((le, total))
            family.add_metric(labels, buckets, counts[-1])
        return family


class Series:
    """The collector of a registry's hot-path families."""

    def __init__(self) -> None:
        self.families: list[CounterSeries | HistogramSeries] = []

    def counter(self, name: str, help: str, labelnames: Sequence[str]) -> CounterSeries:
        family = CounterSeries(name, help, labelnames)
        self.families.append(family)
        return family

    def histogram(self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]) -> HistogramSeries:
        family = HistogramSeries(name, help, labelnames, buckets)
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()
