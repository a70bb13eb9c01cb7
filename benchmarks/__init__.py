"""tollmesh's benchmarks: ``tollmesh bench`` (or ``python -m benchmarks``), one command, one run, one machine.

It measures, side by side in one run: the seed's in-process booth (nano-empire-tollbooth 0.3.0,
the ``bench`` extra), ours (``mesh.Tollbooth``), the mesh's single call (``Mesh.call``) and its
batches (``Mesh.send``), each with lifecycles/s, latency p50/p99/max, its ratio to the seed's rate,
the CPU per lifecycle of each process role and the modeled ceiling with more cores; then sweeps
over shards, batch size, agents, concurrency, contention and failure rate.

Modules, one measured thing or one step each: ``seed`` (the seed's booth and the timed loop),
``booth`` (both in-process booths), ``agents`` (the bench's agent and messages), ``mesh_runs``
(meshes on a Ray of their own: call, send, acall), ``processes`` (CPU and memory by Ray process
title), ``figures`` (percentiles, ratios, the ceiling), ``record`` (one run's figures), ``plan``
(the options), ``run`` (the whole run), ``report`` (the table, the README's table), ``plot``
(the PNG), ``command`` (the CLI). Parts run on their own: ``python -m benchmarks.ledger_writers``
(the ledger writers' events/s), ``python -m benchmarks.ledger_floor`` (the least the ledger can
cost a lifecycle), ``python -m benchmarks.ledger_seal`` (ledger format v2's seal per batch against
v1's hash per line, SHA-256 against BLAKE2b), ``python -m benchmarks.simulate`` (``tollmesh simulate``,
cold, repeated).

This package imports nothing heavy: ``tollmesh`` reads the bench's options from :mod:`benchmarks.plan`.
"""
