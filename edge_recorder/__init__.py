"""edge-recorder: a server-side recorder for video-conference rooms.

RTP from an SFU comes in on bound UDP sockets, is decoded and composited in-process
with PyAV, encoded to H.264/AAC in a fragmented MP4 and (later) streamed to S3.
"""

__version__ = "0.1.0"
