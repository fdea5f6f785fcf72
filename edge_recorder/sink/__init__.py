"""Where the recording goes: chunk planning (pure), the object store, the uploader.

* :mod:`edge_recorder.sink.plan`: which spool byte ranges become which chunk
  objects, and their keys (pure).
* :mod:`edge_recorder.sink.s3`: ``ObjectStore`` (blocking, minio) and
  ``AsyncObjectStore`` (its Trio door).
* :mod:`edge_recorder.sink.uploader`: ``SpoolUploader``, the Trio task that
  uploads chunks while recording and composes them at stop.

docs/storage.md describes the design and the object layout.
"""
