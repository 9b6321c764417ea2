"""The agent's Prometheus metrics: container, pod and node series read at scrape time, and the
counters and histograms pod events feed."""
