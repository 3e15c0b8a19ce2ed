"""The only package that talks to the API server (and to agents over HTTP): apply, prune, observe, probe."""
