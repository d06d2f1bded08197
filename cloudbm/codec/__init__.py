"""Compression and encryption as byte-stream layers: the object envelope and its keys.

Pure byte streams: nothing here knows about storage, PostgreSQL or commands. Submodules are
imported on demand (``from cloudbm.codec.envelope import ...``) so the package stays cheap.
"""
