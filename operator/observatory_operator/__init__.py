"""happy-observatory's kopf operator: ObservatoryCollector and AggregationRule reconcilers."""

__version__ = "2.0.0"
