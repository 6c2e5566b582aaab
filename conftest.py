"""pytest at the project root: what collection skips on a machine without extras.

``machine_translation/exporting`` imports ``transformers`` (the ``export`` extra),
so its doctests are collected only where that is installed; the export tests skip
themselves likewise (``tests/machine_translation/test_export.py``).
"""

import importlib.util

collect_ignore_glob = (
    []
    if importlib.util.find_spec("transformers")
    else ["machine_translation/exporting/*"]
)
