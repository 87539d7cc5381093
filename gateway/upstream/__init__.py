"""Upstream model servers: a lean keep-alive HTTP client and a pool with health checks and failover."""
