"""Serving logic between the HTTP routes and the backends: sessions, monitoring, response shapes."""
