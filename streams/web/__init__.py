"""The worker's HTTP pages: /health, /metrics (Prometheus), the dashboard, consumer lag."""
