"""Operating a cluster: its definition under --dir, node processes, status."""
