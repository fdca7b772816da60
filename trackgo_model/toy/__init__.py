"""The toy reproduction: a synthetic world, the same data pipeline, trainer and metrics as the real
thing, at a size a 2-core CPU trains in under an hour (``make toy``, ``trackgo toy …``).

Stages (:mod:`trackgo_model.toy.stages`): videos → data → vae → base → trackgo (+ ablations) → eval.
Configuration: :mod:`trackgo_model.toy.config` (``configs/toy.yaml``); evaluation and reports:
:mod:`trackgo_model.toy.evaluate`, :mod:`trackgo_model.toy.report`.
"""
