"""Where the recording goes: one spool streamer, three targets, the object store and its twin.

* :mod:`edge_recorder.sink.plan`: which spool byte ranges are sent when, and
  the object keys (pure).
* :mod:`edge_recorder.sink.streamer`: :class:`~edge_recorder.sink.streamer.SpoolStreamer`,
  the one uploader (plan, wake-ups, spool reads, backoff, retry period,
  hashing, exclusive final write, progress), and the
  :class:`~edge_recorder.sink.streamer.UploadTarget` Protocol it drives.
* Targets: :mod:`edge_recorder.sink.multipart` (one S3 multipart upload,
  completed at stop: the default), :mod:`edge_recorder.sink.compose` (chunk
  objects rolled up, composed server-side at stop), :mod:`edge_recorder.sink.local`
  (no bucket: the spool is the recording).
* :mod:`edge_recorder.sink.exclusive`: whose object is at the key (never over another).
* :mod:`edge_recorder.sink.store`: the :class:`~edge_recorder.sink.store.RecordingStore`
  Protocol; :mod:`edge_recorder.sink.s3` implements it over minio
  (``ObjectStore`` blocking, ``AsyncObjectStore`` its Trio door),
  :mod:`edge_recorder.sink.memory` in memory, with faults (tests).

docs/storage.md describes the design and the object layout.
"""
