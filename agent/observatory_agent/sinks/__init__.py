"""Where aggregates go: line protocol encoding, the InfluxDB writer and the durable buffer."""
