"""The local test bed: a from-source control plane, InfluxDB and simulated nodes (see TESTENV.md)."""
