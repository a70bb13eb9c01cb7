"""The Ray actors of the mesh (budget shards, escrow coordinator, ledger writer, agent hosts).

They arrive with the distributed-mesh work; they will share the pure core in
:mod:`mesh` (money, budgets, escrow) and the ledger in :mod:`ledger`.
"""
