"""KubeRay and Kueue from rayorch's configs: render, validate offline, submit, read status.

Pure (no ``kubernetes`` import): ``config``, ``names``, ``render_rayjob``, ``render_kueue``,
``manifests``, ``schema``, ``rules``, ``validate``, ``status``. The ``kubernetes`` client is
imported only by ``client`` (API calls) and ``roundtrip`` (pod templates through the client's
models). See docs/kubernetes.md.
"""
