"""CCTV clips (seed 003): the Hikvision ISAPI client, ffmpeg, and the clip requests' store.

The actor that drives them is :mod:`actors.cctv`.
"""
