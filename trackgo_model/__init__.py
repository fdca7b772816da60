"""trackgo_model: TrackGo on Stable Video Diffusion — encoder, TrackAdapter, losses, pipeline,
training and evaluation. Builds on ``trackgo_data``; never imports Prefect."""
__version__ = "0.1.0"
