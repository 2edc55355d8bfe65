"""The data plane: a lean HTTP/1.1 protocol for the edge's hot path, with aiohttp behind
it.  Its modules, one noun each (docs/edge.md, "Module map and the path of a request"):

- ``plane``: what a process's connections share (``Plane``, ``Limits``), its sweeper;
- ``connection``: one accepted socket (``Connection``, its ``Phase``);
- ``head``: request heads (limits, field search, version and Host rules);
- ``body``: where a request body ends (``Length``, ``Chunked``);
- ``answers``: the object routes' answers (common.representation rendered, ``Prebuilt``);
- ``send``: sealed bodies by ``sendfile``; ``lending``: lending a request to aiohttp;
- ``stats``: the request metrics, a prometheus_client collector; ``clock``; ``failures``.

(Nothing is imported here: edge.metrics uses ``stats`` below the service the rest needs.)
"""
