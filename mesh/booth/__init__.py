"""The in-process booth: :class:`~mesh.booth.tollbooth.Tollbooth` and what it is configured, verified and
settled with (config, verifier, monetize, settlement, restored). It builds on ``mesh.core`` and ``ledger``.

>>> from mesh.booth.config import TollboothConfig
>>> TollboothConfig(paper_mode=True).toll_per_message_usd
0.001
"""
