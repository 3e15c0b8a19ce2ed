"""Thin kopf handlers: parse the resource, build, apply, observe, write status (the work is in build/ and kube/)."""
