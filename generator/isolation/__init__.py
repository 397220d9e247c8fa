"""Isolated builds: a build (and everything it runs) reaches the package mirrors it is given, nothing else.

Every build runs in the network namespace of a small *holder* container started with no network at all
(only `lo`). Inside that namespace the holder listens on one loopback address per mirror and passes
each connection, through a unix socket on a shared directory, to a relay in the cupaas process, which
connects to the mirror. The engine's API, the registry, `cupaas serve` and every other service of the
host are simply not there: the build's loopback is its own, and it has no route anywhere
(docs/architecture.md, "Build isolation").
"""
