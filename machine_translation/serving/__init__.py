"""The HTTP translation service and its web page (``python -m ...serve``).

- :mod:`~machine_translation.serving.settings`: the service's limits, one typed place.
- :mod:`~machine_translation.serving.libretranslate`: reading a LibreTranslate request
  (JSON or form data) and shaping its response.
- :mod:`~machine_translation.serving.errors`: every error as ``{"error": ...}`` JSON.
- :mod:`~machine_translation.serving.body_limit`: requests over the size limit end
  with 413 before they are parsed.
- :mod:`~machine_translation.serving.batching`: concurrent requests gathered into
  batches, decoded by one worker (in ``serve``, the main thread).
- :mod:`~machine_translation.serving.service`: text in, translations out, through the
  batcher; a text's lines are translated one by one, as ``translate`` does.
- :mod:`~machine_translation.serving.alignment`: the cross-attention heat map of a
  translation.
- :mod:`~machine_translation.serving.app`: the FastAPI routes; ``static/`` the page.
"""
