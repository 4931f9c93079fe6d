"""Codecs behind one registry, the worker pool, rendering and frame access.

- ``service``   the TranscoderService protocol and RenderParams (the seam other layers use)
- ``pool``      ``Transcoder``: the implementation, on a pool of single-threaded processes
- ``jobs``      what a worker runs (transcode / frames / render), errors as TranscodingError
- ``registry``  which installed backend decodes / encodes each transfer syntax UID
- ``backends/`` one module per codec library (pydicom, openjpeg, CharLS, libjpeg, Pillow)
- ``pixels``    reading a Part-10 source, decoding frames, header-vs-data checks
- ``encode``    one decoded frame -> a bitstream in a target syntax
- ``instance``  whole-instance transcoding (Pixel Module, lossy history, encapsulation)
- ``frames``    per-frame bitstreams or native pixels
- ``render``    consumer images (JPEG/PNG/GIF) through the greyscale / colour pipeline
- ``cache``     the on-disk LRU cache of transcoded renditions
- ``errors``    the exception tree
"""
