"""The controller machinery shared by every kind: work queue, cache, rounds, status funnel, Events, leadership."""
