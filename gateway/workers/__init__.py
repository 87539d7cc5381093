"""Several processes serving one port: the supervisor, and what its workers share."""
