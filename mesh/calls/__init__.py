"""What a call through the mesh is: agents, messages and results (``agent``), calls as columns
(``columns``) and the mesh's configuration (``mesh_config``). The actors build on this floor;
the mesh API on top hands it to users.

>>> from mesh.calls.agent import Message
>>> Message("alice", "bob", "hi").target
'bob'
"""
