"""Grafana dashboards for what agents and processors write, generated as code (see ``generate``)."""
