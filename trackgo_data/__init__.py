"""trackgo_data: videos in, TrackGo training samples (image, trajectory video, video) out.

Stages (each a small module with a typed config and string-named backends):
video → clips → segment → points → track → render → filters → sample format v1 → shards + manifest.
This package never imports Prefect; ``flows/`` orchestrates it.
"""
__version__ = "0.1.0"
FORMAT_VERSION = 1
