"""The uploading client: :class:`~oss_callback.AsyncClient` and its buckets (bucket
operations, resumable uploads and their checkpoints, request bodies, retries, the HTTP
session on httpx, credentials providers) and the synchronous facade on a portal thread.

Internal: import the public names from :mod:`oss_callback`.
"""
