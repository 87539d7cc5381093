"""The HTTP edge: what a client connection may cost the server before its request is served."""
