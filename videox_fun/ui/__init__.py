"""The web UI (``videox-fun ui``): a Gradio page that is a client of the generation service.

- :mod:`.client`: the REST calls the page makes (to its own service, or a remote one).
- :mod:`.app`: the page, its controls built from the mode table and the model listing.
- :mod:`.cli`: the command, and the entry of the thin ``examples/*/app.py`` scripts.

Needs the ``ui`` extra (``pip install 'videox-fun[ui]'``).
"""
