"""MONAI Label glue: assembling a ``monaibundle`` app that serves our bundles (:mod:`.app`) and the infer tasks its
patched ``main.py`` builds (:mod:`.infer`, imported inside the MONAI Label server's own environment).

Top layer: may import anything below; nothing imports it.
"""
