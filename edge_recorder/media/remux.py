"""The audio-only mix (``outputs: [..., "audio"]``, issue #14): the composite's AAC copied into an M4A (blocking).

The mix is already encoded once, in the composite. Encoding it again would
cost CPU and could only differ from it; copying its packets (no decoding,
no encoding) gives the same audio, sample for sample and on the same
timeline, in a file a transcription service or a podcast player takes as it
is. It is made once the composite is finished, before the composite is
delivered away from the node.

The M4A is an ordinary MP4 (``ipod`` muxer, ``faststart``: the index first,
so a player starts before the download ends), written into a file created
exclusively: never over a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import av

from edge_recorder.errors import MediaError

__all__ = ["extract_audio"]


def extract_audio(composite: Path, output: Path) -> int:
    """Copy ``composite``'s first audio stream into a new M4A at ``output``; its size in bytes.

    Raises:
        MediaError: ``output`` exists, the composite has no audio, or libav failed
            (a partly written ``output`` is removed).
    """
    try:
        # Exclusively, so nothing is ever written over; then by name, because
        # faststart's second pass reopens the file by its name.
        os.close(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise MediaError(f"cannot create {output}: {exc.strerror or exc}") from None
    try:
        with av.open(str(composite)) as source:
            if not source.streams.audio:
                raise MediaError(f"{composite} has no audio to copy")
            audio = source.streams.audio[0]
            with av.open(str(output), mode="w", format="ipod", options={"movflags": "+faststart"}) as out:
                copy = out.add_stream_from_template(audio)
                for packet in source.demux(audio):
                    if packet.dts is None:
                        continue  # the demuxer's flush packet
                    packet.stream = copy
                    out.mux(packet)
        with output.open("rb") as written:
            os.fsync(written.fileno())
        return output.stat().st_size
    except (av.FFmpegError, OSError, ValueError) as exc:
        output.unlink(missing_ok=True)
        raise MediaError(f"copying the audio of {composite} into {output} failed: {exc}") from exc
    except BaseException:
        output.unlink(missing_ok=True)
        raise
