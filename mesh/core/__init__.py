"""The ground floor: money, clock, records, budget, escrow, errors, ids, sharding.

Pure Python over the standard library; it imports nothing of tollmesh outside ``mesh.core``,
so the ledger and every floor above may build on it (``tests/test_layout.py`` checks).

>>> from mesh.core.money import usd_to_micros
>>> usd_to_micros("0.001")
1000
"""
