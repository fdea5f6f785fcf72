"""``just bench``: the recorder against the ffmpeg CLI, on the same inputs.

The data path of one run, one module per concept::

    inputs   pre-encode once: VP8 screen (720p15) + VP8 camera (360p30) + two Opus
             tones; keep the encoded frames AND mux the same packets into
             .webm/.ogg files for ffmpeg (same bitstreams for both contenders)
    ffmpeg   the replaced design: the ffmpeg CLI composes the same PiP from the
             files, as fast as it can, with the same x264 settings; CPU from wait4()
    replay   a separate sender process replays the RTP in real time into N
             sessions (its CPU is not the recorder's)
    sweep    N concurrent sessions in this process (the parent) + their workers
    rooms    pure: the 2- and 20-person rooms (reused bitstreams), round order,
             their figures and Markdown section; recorded with sweep.run_point
    measure  CPU and RSS sampling of the worker processes and of this process
    report   pure: per-session figures, real-time verdict, table, Markdown section
    placement  a fleet of two serve processes on one redis-server: start and get
             reply times through a forwarding entry node vs on the recording node

Run ``python -m edge_recorder.bench --help``.
"""
