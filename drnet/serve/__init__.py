"""``drnet serve``: a local web page and JSON API showing what a DRN sees in an image.

- :mod:`drnet.serve.api` runs the library's task functions on one decoded image per model and
  returns plain dicts (top-5 classes, class maps, boxes, label maps, activation maps, timings).
- :mod:`drnet.serve.app` is the HTTP server (standard library only): the page, ``GET
  /api/models``, ``POST /api/predict``, one inference worker with a queue.
- ``static/index.html`` is the page: one file, inline CSS and JS, nothing fetched from elsewhere.
"""

from drnet.serve.api import ServedModel, UploadError, decode_image, predict
from drnet.serve.app import make_server, serve_forever

__all__ = ["ServedModel", "UploadError", "decode_image", "make_server", "predict", "serve_forever"]
