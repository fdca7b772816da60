"""TrackGo Studio: a browser page over ``TrackGoPipeline`` and ``trackgo_data.user_input``.

``trackgo studio`` serves it (``studio.cli``); ``studio.app`` is the Gradio page (gradio is imported
only in this package), ``studio.core`` what the page does without the page, ``studio.model`` the
loaded model, ``studio.sam`` click-to-mask with Segment Anything.
"""
